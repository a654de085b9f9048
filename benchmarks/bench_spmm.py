"""Per-layer benchmark of the native sparse 1x1 conv / Linear (SparseConv2d / SparseLinear) against
dense PyTorch, same process, same thread count, interleaved repetitions, medians.

Layers: every distinct 1x1 conv (groups 1) of torch_patsparse.models.resnet50 and mobilenet_v2 at
224x224 input (shapes found with forward hooks), and a few Linear shapes (classifier heads, a VGG
fc). Weights: random, unstructured sparsity at each density, fp32 values, with a bias (a BN-folded
layer). Baseline: F.conv2d in the faster of NCHW / channels_last (both timed, per configuration),
F.linear. Ours: the module's forward on an NCHW input (the native op). ratio = dense / ours (> 1:
ours faster); wall-clock and CPU (process) time medians.

  flock /tmp/patsparse-bench.lock python benchmarks/bench_spmm.py --out benchmarks/results/spmm.md
  python benchmarks/bench_spmm.py --quick
"""
import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch_patsparse as ps  # noqa: E402
from torch_patsparse import models  # noqa: E402
from torch_patsparse.nn import SparseConv2d, SparseLinear  # noqa: E402

LINEAR_SHAPES = [("resnet50.fc", 2048, 1000), ("mobilenet_v2.fc", 1280, 1000), ("vgg16.fc2", 4096, 4096),
                 ("resnet18.fc", 512, 1000)]


def conv1x1_shapes(name, model):
    """[(label, cin, cout, h, w, stride)] of the model's distinct 1x1 groups-1 convs at 224x224."""
    seen, out = set(), []

    def hook(mod, inp, _out):
        x = inp[0]
        key = (mod.in_channels, mod.out_channels, x.shape[2], x.shape[3], mod.stride[0])
        if key not in seen:
            seen.add(key)
            out.append((f"{name} {key[0]}->{key[1]} {key[2]}x{key[3]}" + (f" s{key[4]}" if key[4] > 1 else ""), *key))

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    return out


def pruned(shape, density, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 0.05 * (torch.rand(shape, generator=g) < density)


def timed(fn, inner):
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - w0) / inner * 1e3, (time.process_time() - c0) / inner * 1e3


def measure(variants, reps):
    """{name: (wall ms, cpu ms)} medians; variants timed in turn within each repetition."""
    inner = {}
    for name, fn in variants.items():  # warm up, and pick a call count of >= ~5 ms per sample
        fn()
        w, _ = timed(fn, 1)
        inner[name] = max(1, min(200, int(5.0 / max(w, 1e-3))))
    samples = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            samples[name].append(timed(fn, inner[name]))
    return {n: (statistics.median(s[0] for s in v), statistics.median(s[1] for s in v)) for n, v in samples.items()}


def bench_conv(cin, cout, h, w, stride, density, batch, reps, seed):
    conv = nn.Conv2d(cin, cout, 1, stride=stride)
    with torch.no_grad():
        conv.weight.copy_(pruned(conv.weight.shape, density, seed))
    sparse = SparseConv2d.from_dense(conv)
    x = torch.randn(batch, cin, h, w)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    wt, b = conv.weight.detach(), conv.bias.detach()
    wt_cl = wt.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        r = measure({"dense_nchw": lambda: F.conv2d(x, wt, b, stride),
                     "dense_cl": lambda: F.conv2d(x_cl, wt_cl, b, stride),
                     "ours": lambda: sparse(x)}, reps)
    dense = min(r["dense_nchw"], r["dense_cl"], key=lambda t: t[0])
    fmt = "NCHW" if dense is r["dense_nchw"] else "CL"
    return dense, fmt, r["ours"]


def bench_linear(cin, cout, density, batch, reps, seed):
    lin = nn.Linear(cin, cout)
    with torch.no_grad():
        lin.weight.copy_(pruned(lin.weight.shape, density, seed))
    sparse = SparseLinear.from_dense(lin)
    x = torch.randn(batch, cin)
    wt, b = lin.weight.detach(), lin.bias.detach()
    with torch.no_grad():
        r = measure({"dense": lambda: F.linear(x, wt, b), "ours": lambda: sparse(x)}, reps)
    return r["dense"], "-", r["ours"]


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few layers, density 0.2, batch 1, 1 thread, 3 reps")
    p.add_argument("--densities", type=float, nargs="+", default=[0.2, 0.25])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", help="write the markdown tables to this file")
    args = p.parse_args(argv)
    layers = [("conv", *s) for s in conv1x1_shapes("resnet50", models.resnet50())]
    layers += [("conv", *s) for s in conv1x1_shapes("mobilenet_v2", models.mobilenet_v2())]
    layers += [("linear", label, cin, cout, None, None, None) for label, cin, cout in LINEAR_SHAPES]
    if args.quick:
        layers = layers[:3] + layers[-4:-2]
        args.densities, args.batch, args.threads, args.reps = [0.2], [1], [1], 3
    configs = [(b, t) for b in args.batch for t in args.threads]
    rows, ratios = [], {}
    for kind, label, cin, cout, h, w, stride in layers:
        for d in args.densities:
            cells = []
            for batch, threads in configs:
                torch.set_num_threads(threads)
                seed = cin * 7 + cout
                if kind == "conv":
                    dense, fmt, ours = bench_conv(cin, cout, h, w, stride, d, batch, args.reps, seed)
                else:
                    dense, fmt, ours = bench_linear(cin, cout, d, batch, args.reps, seed)
                ratio_wall, ratio_cpu = dense[0] / ours[0], dense[1] / max(ours[1], 1e-9)
                group = label.split()[0].split(".")[0] + ("" if kind == "conv" else " Linear")
                ratios.setdefault((group, d, batch, threads), []).append(ratio_wall)
                cells.append(f"{dense[0]:.3f} {fmt} / {ours[0]:.3f} = **{ratio_wall:.2f}x** (cpu {ratio_cpu:.2f}x)")
                print(f"{label:38s} d={d:.2f} b={batch} t={threads}: {cells[-1]}", flush=True)
            rows.append(f"| {label} | {d:.2f} | " + " | ".join(cells) + " |")
    head = " | ".join(f"batch {b}, {t} thr: dense ms / ours ms = wall ratio" for b, t in configs)
    lines = ["# Sparse 1x1 conv / Linear (SparseConv2d / SparseLinear native path) vs dense", "",
             f"torch {torch.__version__}, ISA {ps.ops.get_isa()}, {os.cpu_count()} CPUs (shared machine). "
             "Unstructured random sparsity, fp32 values, bias; dense baseline = the faster of F.conv2d NCHW / "
             "channels_last (named per cell), F.linear; ours = module forward on NCHW input. Medians of "
             f"{args.reps} interleaved repetitions; ratio > 1: ours faster.", "",
             "Command: `flock /tmp/patsparse-bench.lock python benchmarks/bench_spmm.py"
             + (" --quick" if args.quick else "") + " --out benchmarks/results/spmm.md`", "",
             "## Geometric mean of the wall-clock ratio", "",
             "| layers | density | " + " | ".join(f"b{b} t{t}" for b, t in configs) + " |",
             "|---|---|" + "---|" * len(configs)]
    for group in dict.fromkeys(k[0] for k in ratios):
        for d in args.densities:
            lines.append(f"| {group} | {d:.2f} | " + " | ".join(
                f"{geomean(ratios.get((group, d, b, t), [])):.2f}x" for b, t in configs) + " |")
    lines += ["", "## Per layer", "", "| layer | density | " + head + " |", "|---|---|" + "---|" * len(configs)]
    lines += rows
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
