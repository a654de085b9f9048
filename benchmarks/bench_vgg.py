"""End-to-end VGG-16 (torch_patsparse.models.vgg16, BatchNorm, eval mode) at 224x224: dense vs the
3x3 convs (except the first, Cin=3) replaced by PatternConv2d, same process, same thread count,
interleaved repetitions, medians. Random weights with the real sparsity structure: 8 patterns of 4
entries, connectivity `keep` per layer, optional group=G (G consecutive filters share
(channel, pattern)).

  python benchmarks/bench_vgg.py --threads 2 --keep 0.25 --group 4
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--configs", default="pattern:1.0:1,conn0.25:0.25:1,conn0.25g4:0.25:4",
                   help="comma-separated name:keep:group")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--stat", choices=["median", "min"], default="median")
    p.add_argument("--fold-bn", action="store_true",
                   help="fold eval BatchNorm into the preceding conv in every model (standard inference deploy)")
    p.add_argument("--markdown", default=None)
    args = p.parse_args()

    import torch
    from torch import nn
    import torch_patsparse as ps
    from torch_patsparse.models import vgg16
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from helpers import PATTERNS8, random_pattern_weight

    def fold_bn(model):
        feats = model.features
        for i in range(len(feats) - 1):
            conv, bn = feats[i], feats[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                with torch.no_grad():
                    conv.weight.mul_(scale.view(-1, 1, 1, 1))
                    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                    conv.bias = nn.Parameter(bn.bias + (b - bn.running_mean) * scale)
                feats[i + 1] = nn.Identity()
        return model

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dense = vgg16().eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding is not a no-op
        for m in dense.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    pset = ps.PatternSet(PATTERNS8)

    def sparse_model(keep, group):
        model = vgg16().eval()
        model.load_state_dict(dense.state_dict())
        feats = model.features
        eligible = [i for i, m in enumerate(feats)
                    if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.in_channels > 3]
        for i in eligible:
            m = feats[i]
            w = random_pattern_weight(m.out_channels, m.in_channels, keep=keep, group=group, seed=i)
            with torch.no_grad():
                m.weight.copy_(w * m.weight.abs().mean() * 3)
        if args.fold_bn:
            fold_bn(model)  # per-output-channel scaling keeps the sparsity structure
        for i in eligible:
            feats[i] = ps.nn.PatternConv2d.from_dense(feats[i], pattern_set=pset)
        return model

    configs = []
    for spec in args.configs.split(","):
        name, keep, group = spec.split(":")
        configs.append((name, sparse_model(float(keep), int(group))))

    if args.fold_bn:
        fold_bn(dense)
    x = torch.randn(args.batch, 3, args.size, args.size)
    models = [("dense", dense)] + configs
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    with torch.no_grad():
        for _, m in models:
            m(x)
        times = {n: [] for n, _ in models}
        for _ in range(args.reps):
            for n, m in models:
                t0 = clock()
                m(x)
                times[n].append(clock() - t0)
    pick = statistics.median if args.stat == "median" else min
    med = {n: pick(t) * 1e3 for n, t in times.items()}
    lines = [f"VGG-16 {args.size}x{args.size}, batch {args.batch}, {args.threads} threads, patsparse path "
             f"{ps.ops.get_isa()}, reps {args.reps} ({args.stat} of interleaved reps), clock {args.clock}"
             + (", BatchNorm folded into the convs" if args.fold_bn else ""), "",
             "| model | ms | speed-up vs dense |", "|---|---|---|"]
    for n, _ in models:
        lines.append(f"| {n} | {med[n]:.1f} | {med['dense'] / med[n]:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(f"\nCommand: `python benchmarks/bench_vgg.py {' '.join(sys.argv[1:])}`\n\n" + text)


if __name__ == "__main__":
    main()
