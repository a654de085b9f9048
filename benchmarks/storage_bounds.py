"""Upper bounds for the 1,000x LeNet-5 / Fashion-MNIST point (issue #6): what can 1,967 bits hold?

1,000x on LeNet-5 means at most 32 * 61,470 / 1,000 = 1,967 stored bits for all conv/linear weights.
Whatever the format, a model stored in that many bits is (a) a *narrow* net whose kept weights sit in
dense blocks (positions implicit, >= 1 bit per weight, so <= ~1,900 weights), or (b) a sparse net
that pays for its positions (>= log2 C(N_l, k_l) bits per layer + 1 bit per value, so ~200-250
weights), or a mix of the two. This script trains the *full-precision* (fp32) version of each family
at that size with a strong recipe, positions free; a 1-bit-per-weight model of the same shape can only
do worse, so each accuracy is an upper bound for its family at 1,000x:

- narrow LeNet-5s (2 conv 5x5 + 3 FC, same topology, fewer channels / neurons), trained from scratch
  (the best one also twice as long with knowledge distillation from the dense model);
- sparse LeNet-5s with k_l weights per layer at free positions: dense model -> gradual magnitude
  pruning (cubic schedule) -> masked fine-tuning with knowledge distillation from the dense model.
  Sizes: the largest k (two allocations across layers: as in settings L3 and T1) whose
  position entropy + 1 bit per value fits 1,967 bits, k = 1,936 (about what the papers' values-only
  count allows at 1 bit per value), and k = 450: a mask inside narrow blocks of S slots with a
  fraction f kept costs >= S (H(f) + f) bits, so S > 1,967 slots leaves f < 0.23 and <= ~450 weights
  (S <= 1,967 is a sub-model of a narrow net of that size).

    python benchmarks/storage_bounds.py            # ~20 min on one core; writes results/storage_bounds.md
"""
import argparse
import copy
import math
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from storage_experiment import accuracy, load_fmnist, log2_binom, run_epochs, train_onecycle  # noqa: E402
from torch_patsparse.models import LeNet5  # noqa: E402

BUDGET_BITS = 32 * 61470 // 1000  # 1,967
LAYER_SIZES = [150, 2400, 48000, 10080, 840]  # LeNet-5 conv1, conv2, fc1, fc2, fc3 weights
L3_KEPT = [38, 36, 37, 39, 41]  # the per-layer allocation of setting L3 (storage_experiment.py)
T1_KEPT = [90, 360, 1200, 202, 84]  # setting T1: ~1,900 ternary weights


def weights_of(model):
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def sparse_min_bits(kept):
    """Fewest bits any code needs for weights at free positions: position entropy + 1 bit per value."""
    return sum(log2_binom(n, k) + k for n, k in zip(LAYER_SIZES, kept))


def largest_allocation(shape, budget):
    """The largest multiple of the allocation ``shape`` whose ``sparse_min_bits`` fits ``budget``."""
    lo, hi = 0.0, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        kept = [min(n, max(1, round(mid * k))) for n, k in zip(LAYER_SIZES, shape)]
        lo, hi = (mid, hi) if sparse_min_bits(kept) <= budget else (lo, mid)
    return [min(n, max(1, round(lo * k))) for n, k in zip(LAYER_SIZES, shape)]


def magnitude_masks(model, kept):
    return [(w.abs() >= w.abs().flatten().kthvalue(w.numel() - k + 1).values).float() if k < w.numel()
            else torch.ones_like(w) for w, k in zip(weights_of(model), kept)]


def prune_to(model, teacher, data, kept, prune_epochs, finetune_epochs, lr=1e-3):
    """Gradual magnitude pruning (Zhu & Gupta cubic schedule) to ``kept`` weights per layer, then masked
    fine-tuning with cosine lr decay and distillation; the masks hold the weights at exactly ``kept``."""
    xtr, ytr = data
    steps = math.ceil(xtr.shape[0] / 128)
    ws = weights_of(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    masks = [torch.ones_like(w) for w in ws]
    stages = 20
    for s in range(1, stages + 1):
        frac = 1 - (1 - s / stages) ** 3
        target = [round(w.numel() - frac * (w.numel() - k)) for w, k in zip(ws, kept)]
        masks = magnitude_masks(model, target)
        with torch.no_grad():
            for w, m in zip(ws, masks):
                w.mul_(m)
        _masked_epochs(model, opt, data, prune_epochs / stages, masks, teacher, seed=s)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, finetune_epochs * steps)
    _masked_epochs(model, opt, data, finetune_epochs, masks, teacher, sched=sched, seed=99)
    assert [int(m.sum()) for m in masks] == list(kept)
    return model


def _masked_epochs(model, opt, data, epochs, masks, teacher, sched=None, seed=0):
    """``epochs`` (may be fractional) of distillation training, re-applying ``masks`` after each step."""
    xtr, ytr = data
    step = _Step(opt, weights_of(model), masks, sched)
    whole, part = int(epochs), epochs - int(epochs)
    run_epochs(model, step, xtr, ytr, whole, seed=seed, teacher=teacher)
    if part > 0:
        sub = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(seed))[:round(part * xtr.shape[0])]
        run_epochs(model, step, xtr[sub], ytr[sub], 1, seed=seed, teacher=teacher)


class _Step:
    """A tiny optimizer facade for ``run_epochs``: the base step, the lr schedule, then the masks."""

    def __init__(self, opt, ws, masks, sched):
        self.opt, self.ws, self.masks, self.sched = opt, ws, masks, sched

    def zero_grad(self, set_to_none=True):
        self.opt.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self):
        self.opt.step()
        for w, m in zip(self.ws, self.masks):
            w.mul_(m)
        if self.sched is not None:
            self.sched.step()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=15, help="dense / narrow training epochs")
    ap.add_argument("--prune-epochs", type=float, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "storage_bounds.md"))
    ap.add_argument("--kept", action="append", default=[], metavar="K1,K2,K3,K4,K5",
                    help="only: fp32 sparse LeNet-5s with these kept weights per layer, pruned from --dense")
    ap.add_argument("--dense", help="--kept: the dense LeNet-5 state_dict to prune (e.g. storage_experiment.py's "
                                    "--cache-dense file)")
    ap.add_argument("--no-distill", action="store_true", help="--kept: fine-tune without distillation")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    xtr, ytr = load_fmnist("train")
    xte, yte = load_fmnist("test")
    data = (xtr, ytr)
    if args.kept:  # upper bounds at other budgets (e.g. 100x): print only
        dense = LeNet5()
        dense.load_state_dict(torch.load(args.dense, weights_only=True))
        teacher = None if args.no_distill else copy.deepcopy(dense).eval()
        print(f"dense {accuracy(dense, xte, yte):.2f}%", flush=True)
        for spec in args.kept:
            kept = [int(k) for k in spec.split(",")]
            t0 = time.time()
            model = prune_to(copy.deepcopy(dense), teacher, data, kept, args.prune_epochs, args.finetune_epochs)
            print(f"sparse fp32 {kept} ({sum(kept)} weights, {args.prune_epochs:g} + {args.finetune_epochs} epochs, "
                  f"distillation {teacher is not None}): top-1 {accuracy(model, xte, yte):.2f}% "
                  f"({time.time() - t0:.0f}s)", flush=True)
        return
    rows = []

    def record(family, shape, nweights, acc, t0, min_bits):
        rows.append((family, shape, nweights, acc, min_bits))
        print(f"{family:8s} {shape:28s} weights {nweights:6d}  >= {min_bits:6.0f} bits  top-1 {acc:.2f}%  "
              f"({time.time() - t0:.0f}s)", flush=True)

    t0 = time.time()
    torch.manual_seed(0)
    dense = train_onecycle(LeNet5(), xtr, ytr, args.epochs, 1e-3)
    record("dense", "LeNet-5 (6, 16, 120, 84)", 61470, accuracy(dense, xte, yte), t0, 32 * 61470)
    for dims in [(4, 4, 10, 10), (3, 4, 12, 10), (3, 6, 8, 8), (4, 8, 8, 8), (6, 8, 16, 16)]:
        t0 = time.time()
        torch.manual_seed(0)
        model = train_onecycle(LeNet5(widths=dims), xtr, ytr, args.epochs, 1e-3)
        n = sum(w.numel() for w in weights_of(model))
        record("narrow", f"LeNet-5 {dims}", n, accuracy(model, xte, yte), t0, n)
    teacher = copy.deepcopy(dense).eval()
    t0 = time.time()  # the best narrow shape again, twice as long and distilled from the dense model
    torch.manual_seed(0)
    model = train_onecycle(LeNet5(widths=(4, 4, 10, 10)), xtr, ytr, 2 * args.epochs, 1e-3, teacher=teacher)
    record("narrow", f"LeNet-5 (4, 4, 10, 10), {2 * args.epochs} ep. + distillation", 1700, accuracy(model, xte, yte),
           t0, 1700)
    for label, kept in [("L3 x s, fits 1,967 bits", largest_allocation(L3_KEPT, BUDGET_BITS)),
                        ("T1 x s, fits 1,967 bits", largest_allocation(T1_KEPT, BUDGET_BITS)),
                        ("L3 x s, 450 (masks in narrow blocks)", [round(k * 450 / sum(L3_KEPT)) for k in L3_KEPT]),
                        ("T1 (1,936: values-only 1,000x)", T1_KEPT)]:
        t0 = time.time()
        model = prune_to(copy.deepcopy(dense), teacher, data, kept, args.prune_epochs, args.finetune_epochs)
        record("sparse", f"{label} {kept}", sum(kept), accuracy(model, xte, yte), t0, sparse_min_bits(kept))
    base = rows[0][3]
    lines = ["# Upper bounds at 1,000x (LeNet-5, Fashion-MNIST)", "",
             f"Command: `python benchmarks/storage_bounds.py` (torch {torch.__version__}, {args.threads} thread; "
             f"{args.epochs}-epoch one-cycle Adam training; sparse: {args.prune_epochs:g} epochs of gradual "
             f"magnitude pruning + {args.finetune_epochs} epochs of masked fine-tuning with distillation).", "",
             "Every model here is **fp32 with free positions**: its accuracy bounds from above what any "
             "1-bit-per-weight code of that shape can reach. `min bits` = the fewest bits any code needs "
             "for it (narrow: 1 bit per weight; sparse: log2 C(N_l, k_l) position bits per layer + 1 bit per "
             f"value). The 1,000x budget is {BUDGET_BITS:,} bits; the target is dense - 1.5 points.", "",
             "| family | shape (c1, c2, h1, h2) / kept per layer | weights | min bits at 1 bit/weight | "
             "top-1 % (fp32) | Δ vs dense |", "|---|---|---|---|---|---|"]
    for family, shape, n, acc, bits in rows:
        lines.append(f"| {family} | {shape} | {n:,} | {bits:,.0f} | {acc:.2f} | {acc - base:+.2f} |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
