"""Layer benchmark: torch.ops.patsparse.pattern_conv2d against dense F.conv2d (oneDNN), same process,
same thread count, interleaved repetitions, medians.

Shapes: every VGG-16 3x3 conv at 224x224 input, the ResNet-18 3x3 shapes
(torch_patsparse.models.VGG16_LAYERS / RESNET18_LAYERS) and ResNet-50's stride-2 3x3 convs (r50.*;
'r50' or 'stride2' select them, 'all' includes them). Densities (random weights with the real
sparsity structure, 8 patterns of 4 entries):
  pattern      every kernel kept, 4 of 9 weights          (FLOP reduction 2.25x)
  patterng4    + group=4 without connectivity: 4 consecutive filters share their patterns  (2.25x)
  conn0.25     + connectivity: 25% of the kernels kept    (9x)
  conn0.25g4   + group=4: 4 consecutive filters share (channel, pattern)  (9x)

Columns: ratio = dense ms / pattern ms; GF/s = useful FLOPs (2 x kept weights x output pixels) per
second; %lim = ratio / FLOP-reduction limit. --avx2 reruns everything in a subprocess with
ONEDNN_MAX_CPU_ISA=AVX2 (set before torch is imported) and PATSPARSE_ISA=avx2.

  python benchmarks/bench_layers.py --quick
  python benchmarks/bench_layers.py --batch 1 8 --threads 1 2 --avx2
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DENSITIES = [("pattern", 1.0, 1), ("patterng4", 1.0, 4), ("conn0.25", 0.25, 1), ("conn0.25g4", 0.25, 4)]
# ResNet-50's stride-2 3x3 convs (torchvision v1.5: the stride sits in the bottleneck's 3x3); its
# stride-1 3x3 shapes equal ResNet-18's.
RESNET50_DOWN_LAYERS = [("layer2_down", 128, 128, 56, 2), ("layer3_down", 256, 256, 28, 2),
                        ("layer4_down", 512, 512, 14, 2)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="batch 1, 1 thread, 3 reps, a few layers")
    p.add_argument("--layers", default="all",
                   help="comma-separated layer names (with or without the model prefix), 'vgg', 'resnet' (ResNet-18), "
                        "'r50' (ResNet-50's stride-2 layers), 'stride2' or 'all'")
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--densities", default="all", help="comma-separated subset of " + ",".join(d[0] for d in DENSITIES))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: perf_counter; cpu: process CPU time (all threads; immune to other load on a shared "
                        "box, but with >1 thread it sums the threads, so only ratios at equal threads compare)")
    p.add_argument("--stat", choices=["median", "min"], default="median",
                   help="min: best of the interleaved reps (closest to an idle machine when others load it)")
    p.add_argument("--isa", default=None, help="force the patsparse path (default: best)")
    p.add_argument("--avx2", action="store_true", help="also run the AVX2 path vs oneDNN limited to AVX2")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # child mode
    p.add_argument("--markdown", default=None, help="append the tables to this file")
    return p.parse_args(argv)


def select_layers(spec):
    from torch_patsparse.models import RESNET18_LAYERS, VGG16_LAYERS
    vgg = [("vgg." + n, *r) for n, *r in VGG16_LAYERS]
    res = [("r18." + n, *r) for n, *r in RESNET18_LAYERS]
    r50 = [("r50." + n, *r) for n, *r in RESNET50_DOWN_LAYERS]
    every = vgg + res + r50
    if spec == "all":
        return every
    if spec == "vgg":
        return vgg
    if spec == "resnet":
        return res
    if spec == "r50":
        return r50
    if spec == "stride2":
        return [l for l in every if l[4] == 2]
    names = spec.split(",")
    return [l for l in every if l[0] in names or l[0].split(".", 1)[1] in names]


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
    dens = [d for d in DENSITIES if args.densities == "all" or d[0] in args.densities.split(",")]
    rows = []
    torch.manual_seed(0)
    for name, cin, cout, hw, stride in select_layers(args.layers):
        wd = torch.randn(cout, cin, 3, 3)
        sparse = []
        for dname, keep, group in dens:
            w = random_pattern_weight(cout, cin, keep=keep, group=group, seed=cin + cout)
            a = compressed(w, PATTERNS8)
            sparse.append((dname, [a[k] for k in fmt.ARRAY_NAMES], a["values"].numel()))
        for batch in args.batch:
            x = torch.randn(batch, cin, hw, hw)
            oh = (hw + 2 - 3) // stride + 1
            dense_flops = 2.0 * batch * cout * cin * 9 * oh * oh
            for threads in args.threads:
                torch.set_num_threads(threads)
                fns = [lambda: F.conv2d(x, wd, None, stride, 1)]
                for _, arr, _ in sparse:
                    fns.append(lambda arr=arr: ops.pattern_conv2d(x, *arr, None, stride, 1, 1))
                with torch.no_grad():
                    for f in fns:
                        f()  # warm-up (plan build, oneDNN primitive)
                    times = [[] for _ in fns]
                    clock = time.perf_counter if args.clock == "wall" else time.process_time
                    for _ in range(args.reps):  # interleaved repetitions
                        for i, f in enumerate(fns):
                            t0 = clock()
                            f()
                            times[i].append(clock() - t0)
                pick = statistics.median if args.stat == "median" else min
                med = [pick(t) for t in times]
                for (dname, _, kept), t in zip(sparse, med[1:]):
                    useful = 2.0 * batch * kept * oh * oh
                    limit = dense_flops / useful
                    rows.append(dict(layer=name, cin=cin, cout=cout, hw=hw, stride=stride, batch=batch,
                                     threads=threads, density=dname, dense_ms=med[0] * 1e3, ms=t * 1e3,
                                     ratio=med[0] / t, gflops=useful / t / 1e9,
                                     dense_gflops=dense_flops / med[0] / 1e9, limit=limit,
                                     pct=100.0 * (med[0] / t) / limit))
                if not args.json:
                    print(f"  {name} b{batch} t{threads}: dense {med[0]*1e3:.2f} ms; "
                          + ", ".join(f"{d[0]} x{med[0]/m:.2f}" for d, m in zip(sparse, med[1:])), file=sys.stderr)
    return rows, ops.get_isa()


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def tables(rows, title):
    out = [f"### {title}", ""]
    dens = list(dict.fromkeys(r["density"] for r in rows))
    out.append("| layer | Cin | Cout | HW | s | N | thr | dense ms | dense GF/s | "
               + " | ".join(f"{d} ratio | {d} GF/s | {d} %lim" for d in dens) + " |")
    out.append("|" + "---|" * (9 + 3 * len(dens)))
    keyed = {}
    for r in rows:
        keyed.setdefault((r["layer"], r["batch"], r["threads"]), {})[r["density"]] = r
    for (layer, batch, threads), by in keyed.items():
        r0 = next(iter(by.values()))
        cells = []
        for d in dens:
            r = by.get(d)
            cells += [f"{r['ratio']:.2f}x", f"{r['gflops']:.0f}", f"{r['pct']:.0f}%"] if r else ["", "", ""]
        out.append(f"| {layer} | {r0['cin']} | {r0['cout']} | {r0['hw']} | {r0['stride']} | {batch} | {threads} | "
                   f"{r0['dense_ms']:.2f} | {r0['dense_gflops']:.0f} | " + " | ".join(cells) + " |")
    out += ["", "Geometric mean of the ratio over layers:", "",
            "| N | threads | " + " | ".join(f"{d} (limit {next(r['limit'] for r in rows if r['density'] == d):.2f}x)"
                                       for d in dens) + " |",
            "|" + "---|" * (2 + len(dens))]
    for batch in sorted({r["batch"] for r in rows}):
        for threads in sorted({r["threads"] for r in rows}):
            sel = [r for r in rows if r["batch"] == batch and r["threads"] == threads]
            if sel:
                out.append(f"| {batch} | {threads} | " + " | ".join(
                    f"{geomean([r['ratio'] for r in sel if r['density'] == d]):.2f}x" for d in dens) + " |")
    return "\n".join(out) + "\n"


def main():
    args = parse_args()
    if args.quick:
        args.batch, args.threads, args.reps = [1], [1], 3
        if args.layers == "all":
            args.layers = "conv2_2,conv3_2,conv4_2,conv5_1,layer1,layer3_down,layer4"
    if args.json:
        rows, isa = measure(args)
        print(json.dumps({"rows": rows, "isa": isa}))
        return
    import torch
    rows, isa = measure(args)
    header = (f"torch {torch.__version__}, patsparse path {isa}, dense F.conv2d (oneDNN default ISA), "
              f"reps {args.reps} ({args.stat} of interleaved reps), clock {args.clock}")
    text = tables(rows, header)
    if args.avx2:
        child = [sys.executable, os.path.abspath(__file__), "--json", "--isa", "avx2", "--layers", args.layers,
                 "--reps", str(args.reps), "--densities", args.densities, "--clock", args.clock, "--stat", args.stat,
                 "--batch", *map(str, args.batch), "--threads", *map(str, args.threads)]
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", PATSPARSE_ISA="avx2",
                   PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        res = subprocess.run(child, env=env, capture_output=True, text=True, check=True)
        data = json.loads(res.stdout.strip().splitlines()[-1])
        text += "\n" + tables(data["rows"], f"AVX2 path ({data['isa']}) vs oneDNN with ONEDNN_MAX_CPU_ISA=AVX2")
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(f"\nCommand: `python benchmarks/bench_layers.py {' '.join(sys.argv[1:])}`\n\n" + text)


if __name__ == "__main__":
    main()
