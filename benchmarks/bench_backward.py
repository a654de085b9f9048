"""Training-step benchmark: forward + backward (input and weight/value gradients) of one 3x3 layer,
torch.ops.patsparse.pattern_conv2d against dense F.conv2d (oneDNN), same process, same thread count,
interleaved repetitions, medians of CPU time (process_time: immune to other load on a shared box; with
2 threads it sums both threads, so compare ratios only at equal threads) and of wall time.

A step is torch.autograd.grad(conv(x), (x, weight), g) for both (dense weight / compressed values),
bias-free. Shapes: the VGG-16 and ResNet-18 3x3 layers at <= 56x56 (bench_layers.select_layers; the
default 'train' set), or any bench_layers --layers spec. Densities as in bench_layers:
  conn0.25     connectivity 0.25 on 8 patterns of 4: 11% of the weights
  conn0.25g4   + group=4 (4 consecutive filters share (channel, pattern))
Columns: dense ms, ours ms, ratio = dense / ours (CPU clock; 'wall' = same on wall time), and our
step split into forward / grad_input / grad_values (each op timed alone, CPU clock).

  python benchmarks/bench_backward.py --batch 8 --threads 1 2
  python benchmarks/bench_backward.py --quick
"""
import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_layers import DENSITIES, ROOT, geomean, select_layers  # noqa: E402

TRAIN_LAYERS = "conv3_1,conv3_2,conv4_1,conv4_2,conv5_1,r18.layer1,layer2_down,layer2,layer3_down,layer3," \
               "layer4_down,layer4"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="batch 8, 1 thread, 3 reps, 4 layers")
    p.add_argument("--layers", default="train", help="'train' (<= 56x56), or a bench_layers --layers spec")
    p.add_argument("--batch", type=int, nargs="+", default=[8])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--densities", default="conn0.25,conn0.25g4")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--isa", default=None, help="force the patsparse path (default: best)")
    p.add_argument("--markdown", default=None, help="append the tables to this file")
    return p.parse_args(argv)


def measure(args):
    import torch
    import torch.nn.functional as F
    import torch_patsparse  # noqa: F401
    from torch_patsparse import format as fmt
    from torch_patsparse import ops
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from helpers import PATTERNS8, compressed, random_pattern_weight

    if args.isa:
        ops.set_isa(args.isa)
    P = torch.ops.patsparse
    dens = [d for d in DENSITIES if d[0] in args.densities.split(",")]
    spec = TRAIN_LAYERS if args.layers == "train" else args.layers
    rows = []
    torch.manual_seed(0)
    for name, cin, cout, hw, stride in select_layers(spec):
        wd = torch.randn(cout, cin, 3, 3, requires_grad=True)
        sparse = []
        for dname, keep, group in dens:
            a = compressed(random_pattern_weight(cout, cin, keep=keep, group=group, seed=cin + cout), PATTERNS8)
            sparse.append((dname, [a[k] for k in fmt.ARRAY_NAMES[:4]], a["values"].clone().requires_grad_()))
        for batch in args.batch:
            x = torch.randn(batch, cin, hw, hw, requires_grad=True)
            oh = (hw + 2 - 3) // stride + 1
            g = torch.randn(batch, cout, oh, oh)
            s2, p2, d2 = [stride, stride], [1, 1], [1, 1]
            for threads in args.threads:
                torch.set_num_threads(threads)
                fns = [lambda: torch.autograd.grad(F.conv2d(x, wd, None, stride, 1), (x, wd), g)]
                for _, idx, v in sparse:
                    fns.append(lambda idx=idx, v=v: torch.autograd.grad(
                        ops.pattern_conv2d(x, *idx, v, None, stride, 1, 1), (x, v), g))
                    vd = v.detach()
                    fns.append(lambda idx=idx, vd=vd: P.pattern_conv2d(x.detach(), *idx, vd, None, s2, p2, d2))
                    fns.append(lambda idx=idx, vd=vd: P.pattern_conv2d_grad_input(g, list(x.shape), *idx, vd, s2, p2, d2))
                    fns.append(lambda idx=idx, vd=vd: P.pattern_conv2d_grad_values(g, x.detach(), *idx, vd, s2, p2, d2))
                for f in fns:
                    f()  # warm-up (plans, oneDNN primitives)
                cpu = [[] for _ in fns]
                wall = [[] for _ in fns]
                for _ in range(args.reps):  # interleaved repetitions
                    for i, f in enumerate(fns):
                        w0, c0 = time.perf_counter(), time.process_time()
                        f()
                        cpu[i].append(time.process_time() - c0)
                        wall[i].append(time.perf_counter() - w0)
                cm = [statistics.median(t) * 1e3 for t in cpu]
                wm = [statistics.median(t) * 1e3 for t in wall]
                for j, (dname, _, _) in enumerate(sparse):
                    i = 1 + 4 * j
                    rows.append(dict(layer=name, cin=cin, cout=cout, hw=hw, stride=stride, batch=batch,
                                     threads=threads, density=dname, dense_ms=cm[0], ms=cm[i], ratio=cm[0] / cm[i],
                                     wall_ratio=wm[0] / wm[i], fwd=cm[i + 1], gin=cm[i + 2], gval=cm[i + 3]))
                print(f"  {name} b{batch} t{threads}: dense {cm[0]:.1f} ms; "
                      + ", ".join(f"{r['density']} {r['ms']:.1f} ms x{r['ratio']:.2f}" for r in rows[-len(sparse):]),
                      file=sys.stderr, flush=True)
    return rows, ops.get_isa()


def tables(rows, title):
    dens = list(dict.fromkeys(r["density"] for r in rows))
    out = [f"### {title}", "",
           "| layer | Cin | Cout | HW | s | N | thr | dense ms | " + " | ".join(
               f"{d} ms | {d} ratio | {d} wall ratio | {d} fwd / gin / gval ms" for d in dens) + " |",
           "|" + "---|" * (8 + 4 * len(dens))]
    keyed = {}
    for r in rows:
        keyed.setdefault((r["layer"], r["batch"], r["threads"]), {})[r["density"]] = r
    for (layer, batch, threads), by in keyed.items():
        r0 = next(iter(by.values()))
        cells = []
        for d in dens:
            r = by[d]
            cells += [f"{r['ms']:.1f}", f"{r['ratio']:.2f}x", f"{r['wall_ratio']:.2f}x",
                      f"{r['fwd']:.1f} / {r['gin']:.1f} / {r['gval']:.1f}"]
        out.append(f"| {layer} | {r0['cin']} | {r0['cout']} | {r0['hw']} | {r0['stride']} | {batch} | {threads} | "
                   f"{r0['dense_ms']:.1f} | " + " | ".join(cells) + " |")
    out += ["", "Geometric mean of the ratio (dense step / our step) over layers, CPU clock (wall clock):", "",
            "| N | threads | layers | " + " | ".join(dens) + " |", "|" + "---|" * (3 + len(dens))]
    for batch in sorted({r["batch"] for r in rows}):
        for threads in sorted({r["threads"] for r in rows}):
            for label, pred in (("all", lambda r: True), ("ResNet-18", lambda r: r["layer"].startswith("r18.")),
                                ("stride 1", lambda r: r["stride"] == 1)):
                sel = [r for r in rows if r["batch"] == batch and r["threads"] == threads and pred(r)]
                if sel:
                    out.append(f"| {batch} | {threads} | {label} | " + " | ".join(
                        f"{geomean([r['ratio'] for r in sel if r['density'] == d]):.2f}x "
                        f"({geomean([r['wall_ratio'] for r in sel if r['density'] == d]):.2f}x)" for d in dens) + " |")
    return "\n".join(out) + "\n"


def main():
    args = parse_args()
    if args.quick:
        args.batch, args.threads, args.reps = [8], [1], 3
        if args.layers == "train":
            args.layers = "conv4_2,r18.layer1,layer3_down,layer3"
    import torch
    rows, isa = measure(args)
    header = (f"torch {torch.__version__}, patsparse path {isa}, dense F.conv2d (oneDNN default ISA), "
              f"forward + backward, reps {args.reps} (median of interleaved reps)")
    text = tables(rows, header)
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(f"\nCommand: `python benchmarks/bench_backward.py {' '.join(sys.argv[1:])}`\n\n" + text)


if __name__ == "__main__":
    main()
