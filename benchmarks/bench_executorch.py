"""ExecuTorch at batch 1, 1 thread: a converted model (our ExecuTorch kernels for the pattern convs +
XNNPACK for everything else) against the dense model lowered to XNNPACK (what an on-device user runs
today), both as `.pte` programs in the same process, interleaved repetitions, medians; with the
eager PyTorch ratio (dense: BatchNorm folded, the faster of NCHW / channels_last) beside it.

Models: torch_patsparse.models.vgg16 / resnet18 at 224x224 with random weights of the real
sparsity structure (torch_patsparse.models.sparsify_random: every 3x3 conv with Cin > 3 projected
onto 8 patterns of 4 + connectivity 0.25 in groups of 4; 1x1 convs, the stem and Linear dense;
with --keep1x1 0.2 --layers all: 1x1 convs pruned to 20% unstructured and stored as SparseConv2d).
This machine is x86-64: the figure is a proxy until an arm64 device measures it (docs/MOBILE.md).

  flock /tmp/patsparse-bench.lock python benchmarks/bench_executorch.py --reps 9 \\
      --markdown benchmarks/results/executorch.md
  flock /tmp/patsparse-bench.lock python benchmarks/bench_executorch.py --models resnet18 --reps 9 \\
      --layers all --keep1x1 0.2 --markdown benchmarks/results/executorch.md --append
"""
import argparse
import copy
import os
import statistics
import tempfile
import time


def fold_bn(model):
    """Dense baseline for eager timing: every Conv2d followed by a BatchNorm2d in the same parent
    (Sequential order or `convN`/`bnN` attribute pairs) gets it folded."""
    import torch
    from torch import nn

    def fold(conv, bn):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.bias = nn.Parameter(bn.bias + (b - bn.running_mean) * scale)

    with torch.no_grad():
        for parent in list(model.modules()):
            names = list(parent._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = parent._modules[a], parent._modules[b]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    fold(conv, bn)
                    parent._modules[b] = nn.Identity()
            for a in names:
                if a.startswith("conv") and "bn" + a[4:] in parent._modules:
                    conv, bn = parent._modules[a], parent._modules["bn" + a[4:]]
                    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                        fold(conv, bn)
                        parent._modules["bn" + a[4:]] = nn.Identity()
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vgg16,resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--layers", default="3x3", choices=["3x3", "all"], help="ps.convert's layers")
    p.add_argument("--keep1x1", type=float, default=None,
                   help="prune 1x1 convs to this fraction (unstructured; default: left dense)")
    p.add_argument("--markdown", default=None, help="write the table (with its command) to this file")
    p.add_argument("--append", action="store_true", help="append to --markdown instead of replacing it")
    args = p.parse_args()

    import torch
    from executorch.extension.pybindings import portable_lib

    import torch_patsparse as ps
    from torch_patsparse import export, models
    from torch_patsparse.nn import PatternConv2d
    from torch_patsparse.nn.sparse import SparseConv2d

    torch.set_num_threads(1)
    x = torch.randn(1, 3, args.size, args.size)
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench_et_")
    for name in args.models.split(","):
        torch.manual_seed(0)
        dense = models.sparsify_random(getattr(models, name)(), keep3x3=0.25, group=4, patterns=8,
                                       keep1x1=args.keep1x1).eval()
        sparse = ps.convert(copy.deepcopy(dense), layers=args.layers).eval()
        n_conv = sum(isinstance(m, PatternConv2d) for m in sparse.modules())
        n_1x1 = sum(isinstance(m, SparseConv2d) for m in sparse.modules())
        t0 = time.perf_counter()
        dense_pte = export.executorch(dense, os.path.join(tmp, f"{name}_dense.pte"), (x,))
        sparse_pte = export.executorch(sparse, os.path.join(tmp, f"{name}_patsparse.pte"), (x,))
        export_s = time.perf_counter() - t0
        # XNNPACK and our kernels share ExecuTorch's pool; resize it before loading (an XNNPACK
        # runtime keeps the pool it was created with: resizing later left it hanging on a freed pool).
        portable_lib._unsafe_reset_threadpool(1)
        progs = {"dense": export.load_executorch(dense_pte), "patsparse": export.load_executorch(sparse_pte)}
        with torch.no_grad():
            want = sparse(x)
        err = (progs["patsparse"](x) - want).abs().max().item() / want.abs().max().item()
        # Eager PyTorch, same thread count: dense BN-folded in its faster memory format vs converted.
        dense_eager = fold_bn(copy.deepcopy(dense))
        dense_cl = copy.deepcopy(dense_eager).to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        eager = {"eager dense": lambda: dense_eager(x), "eager dense (channels_last)": lambda: dense_cl(x_cl),
                 "eager patsparse": lambda: sparse(x)}
        runs = {**{k: (lambda pr=pr: pr(x)) for k, pr in progs.items()}, **eager}
        wall = {k: [] for k in runs}
        cpu = {k: [] for k in runs}
        with torch.no_grad():
            for f in runs.values():  # warm-up (plans, XNNPACK weight packing, oneDNN primitives)
                f()
            for _ in range(args.reps):
                for k, f in runs.items():
                    c0, w0 = time.process_time(), time.perf_counter()
                    f()
                    wall[k].append(time.perf_counter() - w0)
                    cpu[k].append(time.process_time() - c0)
        med_w = {k: statistics.median(v) * 1e3 for k, v in wall.items()}
        med_c = {k: statistics.median(v) * 1e3 for k, v in cpu.items()}
        best_dense = min(("eager dense", "eager dense (channels_last)"), key=lambda k: med_c[k])
        rows.append(dict(name=name, n_conv=n_conv, n_1x1=n_1x1, size_dense=os.path.getsize(dense_pte),
                         size_sparse=os.path.getsize(sparse_pte), err=err, export_s=export_s,
                         et_dense=(med_w["dense"], med_c["dense"]), et_sparse=(med_w["patsparse"], med_c["patsparse"]),
                         eager_dense=(med_w[best_dense], med_c[best_dense]), eager_dense_fmt=best_dense,
                         eager_sparse=(med_w["eager patsparse"], med_c["eager patsparse"])))
        print(rows[-1], flush=True)

    isa = ps.ops.get_isa()
    extra = "" if args.layers == "3x3" and args.keep1x1 is None else f" --layers {args.layers} --keep1x1 {args.keep1x1}"
    one_by_one = ("1x1 convs dense" if args.keep1x1 is None else
                  f"1x1 convs pruned to {args.keep1x1:g} unstructured" +
                  (" and stored sparse (`layers=\"all\"`: `patsparse::sparse_conv1x1`)" if args.layers == "all" else ""))
    title = "# ExecuTorch: converted model (patsparse kernels + XNNPACK) vs dense ExecuTorch + XNNPACK"
    lines = [title if not args.append else f"## layers={args.layers}, keep1x1={args.keep1x1}", "",
             "Command: `flock /tmp/patsparse-bench.lock python benchmarks/bench_executorch.py "
             f"--models {args.models} --size {args.size} --reps {args.reps}{extra} --markdown <this file>"
             f"{' --append' if args.append else ''}`", "",
             f"**x86-64 proxy** (this machine: x86-64, patsparse kernel path `{isa}`, executorch 1.4.0 pip "
             "wheel, XNNPACK delegate); no arm64 device measured this: the on-device figure is still open "
             "(docs/MOBILE.md). Batch 1, 1 thread (`_unsafe_reset_threadpool(1)`: ExecuTorch's pool, used by "
             f"XNNPACK and by our kernels), {args.size}x{args.size}, random weights with the real structure "
             "(every 3x3 conv with Cin > 3: 8 patterns of 4, connectivity 0.25, group 4 = 11.1% of its "
             f"weights kept; {one_by_one}; stem and Linear dense), BatchNorm folded (XNNPACK folds it into the "
             "dense convs, `export.executorch` runs it in our ops' output stage). Both programs in one process, "
             f"interleaved, median of {args.reps} repetitions; ms = process CPU time (wall in brackets; the box "
             "is shared, CPU time is the steadier clock). Eager columns: PyTorch in the same process, "
             "dense BatchNorm-folded in its faster memory format.", "",
             "| model | 3x3 convs converted | 1x1 convs sparse | .pte dense | .pte patsparse | size ratio | ET dense + XNNPACK ms | "
             "ET patsparse ms | ET speed-up | eager dense ms | eager patsparse ms | eager speed-up | max rel. err |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mb = lambda b: f"{b / 2**20:.1f} MB"  # noqa: E731
        lines.append(
            f"| {r['name']} | {r['n_conv']} | {r['n_1x1']} | {mb(r['size_dense'])} | {mb(r['size_sparse'])} | "
            f"{r['size_dense'] / r['size_sparse']:.2f}x | {r['et_dense'][1]:.1f} ({r['et_dense'][0]:.1f}) | "
            f"{r['et_sparse'][1]:.1f} ({r['et_sparse'][0]:.1f}) | **{r['et_dense'][1] / r['et_sparse'][1]:.2f}x** | "
            f"{r['eager_dense'][1]:.1f} ({r['eager_dense'][0]:.1f}) | {r['eager_sparse'][1]:.1f} "
            f"({r['eager_sparse'][0]:.1f}) | {r['eager_dense'][1] / r['eager_sparse'][1]:.2f}x | {r['err']:.1e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "a" if args.append else "w") as f:
            f.write(("\n" if args.append else "") + text)


if __name__ == "__main__":
    main()
