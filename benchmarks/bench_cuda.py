"""GPU latency of the pattern-sparse CUDA kernel against cuDNN, VGG-16 3x3 layers (224x224 input).

For every layer of torch_patsparse.models.VGG16_LAYERS and batch 1 and 32, three sparsity variants
with random weights of the real structure (8 patterns of 4 entries; nothing is downloaded):
    pattern        every kernel kept, 4 of 9 weights         (4/9 of the dense MACs)
    +conn0.25      25% of the kernels kept (connectivity)    (1/9)
    +conn0.25+g4   same, groups of 4 filters share (channel, pattern) sets (plan group 4)
against dense cuDNN F.conv2d (torch.backends.cudnn.benchmark=True) in fp32 with TF32 off and with TF32
on. Each time is the median of --reps launches timed one by one with CUDA events, after warm-up, in
the same process. Every variant's output is first checked against cuDNN fp32 (TF32 off) on the masked
dense weight. Prints a markdown table (also written to --out).

    python3 benchmarks/bench_cuda.py [--reps 20] [--batches 1,32] [--layers conv1_2,...] [--out FILE]
    python3 benchmarks/bench_cuda.py --smoke     # a few small launches (for compute-sanitizer runs)

A second table (--models, empty to skip) times whole networks of torch_patsparse.models on the GPU as
bench_models.py does on the CPU: ``ps.convert(model, layers="all")`` with and without
``ps.optimize_for_inference`` against the dense model with BatchNorm folded (torch.fx) in NCHW and in
channels_last, fp32 (TF32 off) and TF32, each output checked against dense fp32 first.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_models (--models)

import torch_patsparse  # noqa: E402,F401
from torch_patsparse import format as fmt  # noqa: E402
from torch_patsparse import ops  # noqa: E402
from torch_patsparse.models import VGG16_LAYERS  # noqa: E402

PATTERNS8 = torch.tensor([[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8],
                          [1, 3, 4, 5], [1, 4, 5, 7], [3, 4, 5, 7], [1, 3, 4, 7]], dtype=torch.uint8)
VARIANTS = [("pattern", 1.0, 1), ("+conn0.25", 0.25, 1), ("+conn0.25+g4", 0.25, 4)]


def pattern_weight(cout, cin, keep, group, seed):
    """Dense weight [Cout, Cin, 3, 3]: exactly round(keep * Cin) kernels kept per filter group, each on
    a random one of the 8 patterns; G consecutive filters share the (channel, pattern) set."""
    g = torch.Generator().manual_seed(seed)
    groups = (cout + group - 1) // group
    n_keep = max(1, round(keep * cin))
    order = torch.rand(groups, cin, generator=g).argsort(dim=1)
    keep_mask = torch.zeros(groups, cin, dtype=torch.bool)
    keep_mask.scatter_(1, order[:, :n_keep], True)
    pid = torch.randint(0, 8, (groups, cin), generator=g)
    masks = torch.zeros(8, 9, dtype=torch.bool)
    masks.scatter_(1, PATTERNS8.long(), True)
    m = (masks[pid] & keep_mask.unsqueeze(-1)).repeat_interleave(group, dim=0)[:cout]
    w = torch.randn(cout, cin, 9, generator=g) * (2.0 / (cin * 4 * keep)) ** 0.5
    return (w * m).view(cout, cin, 3, 3)


def time_cuda(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def set_tf32(on):
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def run_sparse(x, arrays, stride):
    return ops.pattern_conv2d(x, *(arrays[k] for k in fmt.ARRAY_NAMES), None, stride, 1, 1)


def smoke():
    """Small forward + backward launches of every kernel path (for compute-sanitizer)."""
    dev = torch.device("cuda")
    for (n, cin, h, w, cout, stride, pad, dil, group) in [(2, 5, 19, 23, 12, 1, 1, 1, 1), (1, 8, 17, 9, 16, 2, 2, 2, 4),
                                                         (1, 40, 20, 20, 8, 1, 1, 1, 8), (1, 3, 70, 70, 2, 1, 30, 30, 2),
                                                         (1, 12, 21, 19, 10, 2, 1, 1, 2)]:
        for dtype in (torch.float32, torch.float64):
            weight = pattern_weight(cout, cin, 0.5, group, seed=cin)
            arrays = {k: v.to(dev) for k, v in fmt.compress(weight, PATTERNS8).items()}
            arrays["values"] = arrays["values"].to(dtype).requires_grad_(True)
            x = torch.randn(n, cin, h, w, device=dev, dtype=dtype, requires_grad=True)
            ref = F.conv2d(x.detach().double().cpu(), weight.double(), None, stride, pad, dil)
            err = 0.0
            for key, val in (("PATSPARSE_CUDA_KERNEL", "simple"), ("PATSPARSE_CUDA_FWD_PIX", "1"),
                             ("PATSPARSE_CUDA_FWD_PIX", "4"), ("PATSPARSE_CUDA_FWD_PIX", "2")):
                os.environ[key] = val
                out = ops.pattern_conv2d(x, *(arrays[k] for k in fmt.ARRAY_NAMES), None, stride, pad, dil)
                os.environ.pop(key)
                err = max(err, (out.detach().double().cpu() - ref).abs().max().item())
            out.sum().backward()
            print(f"smoke n={n} cin={cin} {h}x{w} cout={cout} s={stride} p={pad} d={dil} g={group} {dtype}: "
                  f"max err {err:.2e}")
            assert err < (1e-3 if dtype == torch.float32 else 1e-9), err
    torch.cuda.synchronize()
    print("smoke: OK")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--layers", default=",".join(name for name, *_ in VGG16_LAYERS))
    ap.add_argument("--pix", default="1,2,4", help="PATSPARSE_CUDA_FWD_PIX values compared in the second table")
    ap.add_argument("--out", default="")
    ap.add_argument("--models", default="vgg16,resnet18,resnet50,mobilenet_v2")
    ap.add_argument("--model-batches", default="1,32")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_cuda: no CUDA device")
    if args.smoke:
        smoke()
        return
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    batches = [int(b) for b in args.batches.split(",")]
    layers = [l for l in VGG16_LAYERS if l[0] in args.layers.split(",")]
    pix_values = [p for p in args.pix.split(",") if p]
    lines = []

    def emit(s=""):
        print(s, flush=True)
        lines.append(s)
        if args.out:  # rewritten every line: a run cut short still leaves its rows
            with open(args.out, "w") as f:
                f.write("\n".join(lines) + "\n")

    emit(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
         f"cuDNN {torch.backends.cudnn.version()}; medians of {args.reps} launches (CUDA events); "
         "fp32 activations and weights; 224x224 VGG-16 input sizes")
    emit()
    emit("Speed-up = cuDNN time / pattern kernel time (>1: the sparse kernel is faster). "
         "TF32 on: cuDNN may use tensor cores with 10-bit mantissas (not bit-comparable to fp32).")
    emit()
    head = "| layer | batch | cuDNN fp32 ms | cuDNN TF32 ms |"
    sep = "|---|---:|---:|---:|"
    for name, *_ in VARIANTS:
        head += f" {name} ms | vs fp32 | vs TF32 |"
        sep += "---:|---:|---:|"
    emit(head)
    emit(sep)
    pix_rows = []
    weights = {}
    t_start = time.time()
    for batch in batches:
        for (lname, cin, cout, hw, stride) in layers:
            x = torch.randn(batch, cin, hw, hw, device=dev)
            dense_times = {}
            row_w = None
            cells = []
            for vi, (vname, keep, group) in enumerate(VARIANTS):
                if (lname, vi) not in weights:  # same weights for every batch size
                    weight = pattern_weight(cout, cin, keep, group, seed=cin * 1000 + cout + vi)
                    weights[lname, vi] = (weight.to(dev), {k: v.to(dev) for k, v in fmt.compress(weight, PATTERNS8).items()})
                wd, arrays = weights[lname, vi]
                if vi == 0:
                    row_w = wd
                set_tf32(False)
                ref = F.conv2d(x, wd, None, stride, 1, 1)
                out = run_sparse(x, arrays, stride)
                err = ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
                if not err < 1e-4:
                    raise SystemExit(f"bench_cuda: {lname} b{batch} {vname}: output differs from cuDNN (rel {err:.2e})")
                t = time_cuda(lambda: run_sparse(x, arrays, stride), args.reps)
                cells.append(t)
                if vname == "+conn0.25" and batch == max(batches) and pix_values:
                    times = {}
                    for p in pix_values + ["simple"]:
                        key, val = ("PATSPARSE_CUDA_KERNEL", "simple") if p == "simple" else ("PATSPARSE_CUDA_FWD_PIX", p)
                        os.environ[key] = val
                        times[p] = time_cuda(lambda: run_sparse(x, arrays, stride), max(5, args.reps // 2))
                        os.environ.pop(key)
                    pix_rows.append((lname, batch, times))
                del ref, out
            for tf32 in (False, True):
                set_tf32(tf32)
                dense_times[tf32] = time_cuda(lambda: F.conv2d(x, row_w, None, stride, 1, 1), args.reps)
            set_tf32(False)
            row = f"| {lname} | {batch} | {dense_times[False]:.3f} | {dense_times[True]:.3f} |"
            for t in cells:
                row += f" {t:.3f} | {dense_times[False] / t:.2f}x | {dense_times[True] / t:.2f}x |"
            emit(row)
            del x, row_w
            torch.cuda.empty_cache()
    emit()
    if pix_rows:
        emit(f"Forward variants on +conn0.25, batch {max(batches)} (ms; PATSPARSE_CUDA_FWD_PIX = output pixels per "
             "thread of the tiled kernel, default 2; simple = one thread per output, no shared memory):")
        emit()
        keys = pix_values + ["simple"]
        emit("| layer | " + " | ".join(f"pix={k}" if k != "simple" else "simple" for k in keys) + " |")
        emit("|---|" + "---:|" * len(keys))
        for lname, batch, times in pix_rows:
            emit(f"| {lname} | " + " | ".join(f"{times[k]:.3f}" for k in keys) + " |")
        emit()
    if args.models:
        bench_models_cuda(args, emit)
    emit(f"(total benchmark time {time.time() - t_start:.0f} s)")


def bench_models_cuda(args, emit):
    """Whole networks on the GPU (the module docstring's second table)."""
    import torch.fx.experimental.optimization as fxo
    import torch_patsparse as ps
    from bench_models import build
    dev = torch.device("cuda")
    emit("Whole networks, 224x224, fp32, ms (medians of CUDA-event timed forwards); dense = BatchNorm folded "
         "(torch.fx), best of NCHW / channels_last; ours = ps.convert(layers=\"all\") (+ optimize_for_inference); "
         "ratio = best dense fp32 / ours:")
    emit()
    emit("| model | batch | dense fp32 NCHW | dense fp32 CL | dense TF32 best | converted | optimized | "
         "ratio (optimized) | vs TF32 |")
    emit("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in [m for m in args.models.split(",") if m]:
        dense, converted = build(name)
        folded = fxo.fuse(dense).to(dev)
        folded_cl = fxo.fuse(dense).to(dev).to(memory_format=torch.channels_last)
        converted = converted.to(dev)
        optimized = ps.optimize_for_inference(converted)
        dense = dense.to(dev)  # the reference each output is checked against
        for batch in [int(b) for b in args.model_batches.split(",")]:
            x = torch.randn(batch, 3, 224, 224, device=dev)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            set_tf32(False)
            with torch.no_grad():
                ref = dense(x)
                for label, m in (("converted", converted), ("optimized", optimized)):
                    err = ((m(x) - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
                    if not err < 1e-3:
                        raise SystemExit(f"bench_cuda: {name} b{batch} {label}: output differs from dense (rel {err:.2e})")
                t = {}
                for tf32 in (False, True):
                    set_tf32(tf32)
                    t["nchw", tf32] = time_cuda(lambda: folded(x), args.reps)
                    t["cl", tf32] = time_cuda(lambda: folded_cl(x_cl), args.reps)
                set_tf32(False)
                t["converted"] = time_cuda(lambda: converted(x), args.reps)
                t["optimized"] = time_cuda(lambda: optimized(x), args.reps)
            best = min(t["nchw", False], t["cl", False])
            best_tf32 = min(t["nchw", True], t["cl", True])
            emit(f"| {name} | {batch} | {t['nchw', False]:.3f} | {t['cl', False]:.3f} | {best_tf32:.3f} | "
                 f"{t['converted']:.3f} | {t['optimized']:.3f} | {best / t['optimized']:.2f}x | "
                 f"{best_tf32 / t['optimized']:.2f}x |")
            del x, x_cl, ref
        del dense, folded, folded_cl, converted, optimized
        torch.cuda.empty_cache()
    emit()


if __name__ == "__main__":
    main()
