"""Main job's masked retraining: dense model with masks vs through the compressed modules
(ps.compressed_training), same model, constraints, optimizer and batches.

The model is the main job's fmnist_vgg with its layer rules (configs/default.toml), one-shot pruned
(ADMM.hard_prune). Each repetition trains `--steps` batches of `--batch` Fashion-MNIST-shaped inputs
from the same starting state in each form, the forms interleaved; medians of wall and CPU time per
step, scaled to an epoch (60,000 images). Also prints the loss of both forms over the first steps
(they must agree to rounding).

  python benchmarks/bench_retrain.py --threads 2 --batch 256 --steps 20 --reps 5 --out benchmarks/results/retrain.md
"""
import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch_patsparse as ps  # noqa: E402
from torch_patsparse import cli  # noqa: E402
from torch_patsparse.models import fmnist_vgg  # noqa: E402

EPOCH_IMAGES = 60000


def build(seed: int):
    torch.manual_seed(seed)
    model = fmnist_vgg()
    groups, rest = cli.resolve_layers(model, cli.DEFAULTS["layers"])
    params = [{"params": [p for _, p in members], "names": [n for n, _ in members], "constraints": cons}
              for _, members, cons in groups]
    params.append({"params": [p for _, p in rest], "names": [n for n, _ in rest]})
    opt = ps.ADMM(params, base=torch.optim.SGD, method="oneshot", lr=0.02, momentum=0.9, weight_decay=5e-4)
    opt.hard_prune()
    return model, opt


def run(form: str, steps: int, batches, seed: int):
    """(wall seconds, CPU seconds, losses) of `steps` training steps in `form`."""
    model, opt = build(seed)
    model.train()
    ctx = ps.compressed_training(model, opt) if form == "compressed" else contextlib.nullcontext()
    losses = []
    with ctx:
        t0, c0 = time.perf_counter(), time.process_time()
        for x, y in batches[:steps]:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, losses


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the table (markdown) here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    batches = [(torch.randn(args.batch, 1, 28, 28, generator=gen), torch.randint(0, 10, (args.batch,), generator=gen))
               for _ in range(args.steps)]
    forms = ("dense", "compressed")
    for f in forms:  # warm-up (plan caches, allocator)
        run(f, 2, batches, args.seed)
    times = {f: [] for f in forms}
    losses = {}
    for _ in range(args.reps):
        for f in forms:
            wall, cpu, loss = run(f, args.steps, batches, args.seed)
            times[f].append((wall / args.steps, cpu / args.steps))
            losses[f] = loss
    per_epoch = EPOCH_IMAGES / args.batch
    med = {f: (statistics.median(t[0] for t in times[f]), statistics.median(t[1] for t in times[f])) for f in forms}
    dl = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(losses["dense"], losses["compressed"]))
    lines = [f"threads {args.threads}, batch {args.batch}, {args.steps} steps x {args.reps} interleaved reps, "
             f"torch {torch.__version__}, ISA {ps.ops.get_isa()}",
             "", "| form | ms / step (wall) | ms / step (CPU) | s / epoch (wall, est.) | speedup (wall) |",
             "|---|---|---|---|---|"]
    for f in forms:
        w, c = med[f]
        lines.append(f"| {f} | {w * 1e3:.1f} | {c * 1e3:.1f} | {w * per_epoch:.1f} | {med['dense'][0] / w:.2f}x |")
    lines += ["", f"losses over {args.steps} steps: max relative difference {dl:.2e} "
                  f"(dense {losses['dense'][0]:.6f} -> {losses['dense'][-1]:.6f}, "
                  f"compressed {losses['compressed'][0]:.6f} -> {losses['compressed'][-1]:.6f})"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(f"Command: `python benchmarks/bench_retrain.py {' '.join(sys.argv[1:])}`\n\n{text}\n")


if __name__ == "__main__":
    main()
