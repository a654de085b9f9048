"""Extreme weight-storage experiment: ADMM pruning + quantization on Fashion-MNIST.

LeNet-5 (torch_patsparse.models.LeNet5): unstructured pruning + k-bit quantization of every conv /
linear weight (C.Unstructured + C.Quantize). fmnist_vgg (six 3x3 convs + 2 FC): pattern (8) +
connectivity + quantization on the 3x3 convs, unstructured + quantization on the FC layers.

Each setting: ADMM phase (ps.ADMM over Adam) -> hard_prune -> masked / on-level retraining. The
settings of one model form a chain (each starts from the previous setting's retrained model, a
progressive schedule as in ADMM-NN), so the table is a trade-off curve at a modest cost.

Then every conv / linear is replaced by its compressed module (PatternConv2d for pattern-pruned 3x3
convs, SparseConv2d / SparseLinear otherwise, codes detected from the weights), the compressed model
is evaluated again (its accuracy must equal the pruned model's: same weights), its state_dict is
saved and loaded back with weights_only=True, and the bits are counted.

Bit counting (``weight bits``): per conv / linear weight, the sum of ``storage_bits()`` of the
compressed module without its bias: header (packed fields), index (relative symbols / bitmap, or
the pattern table + filter_ptr + kernel_channel + kernel_pattern of PatternConv2d at their stored
dtype widths), codes (bit-packed, whole bytes) or fp32 values, and the fp32 scale. ``reduction`` =
32 * (number of conv/linear weights) / weight bits. Out of that count, listed separately: biases
(fp32, 32 bits each), BatchNorm parameters and running statistics (VGG, fp32), and the network's
architecture (layer shapes), which is code, not data. ``all-in`` also counts biases (and BN) on
both sides.

    python benchmarks/storage_experiment.py            # full run (~15 min on an idle 2-core machine)
    python benchmarks/storage_experiment.py --quick    # smoke run (~3 min)
"""
import argparse
import copy
import gzip
import io
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch_patsparse as ps  # noqa: E402
from torch_patsparse import constraints as C  # noqa: E402
from torch_patsparse import models  # noqa: E402
from torch_patsparse.admm import ADMM  # noqa: E402
from torch_patsparse.nn import PatternConv2d, SparseConv2d, SparseLinear  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530


# ----------------------------------------------------------------------------------- data
def read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fmnist(split):
    stem = "train" if split == "train" else "t10k"
    x = torch.from_numpy(read_idx(f"{DATA}/{stem}-images-idx3-ubyte.gz").copy()).float().div_(255)
    y = torch.from_numpy(read_idx(f"{DATA}/{stem}-labels-idx1-ubyte.gz").copy()).long()
    return ((x - MEAN) / STD).unsqueeze(1), y


def run_epochs(model, opt, x, y, epochs, bs=128, seed=0):
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


@torch.no_grad()
def accuracy(model, x, y, bs=1000):
    model.eval()
    correct = sum(int((model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum()) for i in range(0, x.shape[0], bs))
    return 100.0 * correct / x.shape[0]


# ----------------------------------------------------------------------------------- settings
LENET = {  # param name -> short layer name
    "features.0.weight": "conv1", "features.3.weight": "conv2", "classifier.1.weight": "fc1",
    "classifier.3.weight": "fc2", "classifier.5.weight": "fc3"}
# (keep fraction, bits) per layer, in LENET order; chained from weakest to strongest.
LENET_SETTINGS = [
    ("L1", [(0.60, 4), (0.15, 3), (0.020, 3), (0.060, 3), (0.30, 4)]),
    ("L2", [(0.40, 3), (0.05, 3), (0.004, 3), (0.015, 3), (0.12, 3)]),
    ("L2b", [(0.30, 3), (0.025, 3), (0.0015, 3), (0.006, 3), (0.07, 3)]),
    ("L3", [(0.25, 3), (0.015, 3), (0.0008, 3), (0.004, 3), (0.05, 3)]),
    ("L4", [(0.18, 2), (0.008, 2), (0.0005, 2), (0.0025, 2), (0.035, 2)]),
]
# VGG: (3x3 conv connectivity keep, conv bits, fc keep, fc bits); 8 patterns of 4 weights.
VGG_SETTINGS = [
    ("V1", (0.25, 4, 0.10, 4)),
    ("V2", (0.08, 2, 0.03, 2)),
]


def lenet_spec(setting):
    return {name.replace(".", r"\."): [C.Unstructured(keep=k), C.Quantize(bits=b)]
            for name, (k, b) in zip(LENET, setting)}


def vgg_groups(model, setting):
    keep, cbits, fkeep, fbits = setting
    convs = [(n, p) for n, p in model.named_parameters() if p.dim() == 4]
    fcs = [(n, p) for n, p in model.named_parameters() if p.dim() == 2]
    rest = [(n, p) for n, p in model.named_parameters() if p.dim() < 2]
    return [{"params": convs, "constraints": [C.Pattern(k=8), C.Connectivity(keep=keep), C.Quantize(bits=cbits)]},
            {"params": fcs, "constraints": [C.Unstructured(keep=fkeep), C.Quantize(bits=fbits)]},
            {"params": rest}]


# ----------------------------------------------------------------------------------- compression + counting
def compress(model, pattern_set=None):
    """Every conv / linear -> its compressed module (PatternConv2d for 3x3 convs when a pattern set is
    given, SparseConv2d / SparseLinear otherwise)."""
    model = copy.deepcopy(model)
    swaps = []
    for name, m in model.named_modules():
        if type(m) is nn.Conv2d and pattern_set is not None and tuple(m.kernel_size) == (3, 3):
            swaps.append((name, PatternConv2d.from_dense(m, pattern_set)))
        elif type(m) is nn.Conv2d:
            swaps.append((name, SparseConv2d.from_dense(m)))
        elif type(m) is nn.Linear:
            swaps.append((name, SparseLinear.from_dense(m)))
    for name, new in swaps:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model, [n for n, _ in swaps]


def count_bits(cmodel, names):
    rows, wbits, dense_w, bias_bits = [], 0, 0, 0
    for name in names:
        m = cmodel.get_submodule(name)
        sb = m.storage_bits()
        b = sb.pop("bias", 0)
        w = sum(sb.values())
        numel = m.macs((1, 1))[0]
        nnz = m.macs((1, 1))[1]
        rows.append({"layer": name, "weights": numel, "kept": nnz, "bits": w, "detail": sb,
                     "kind": type(m).__name__, "index": getattr(m, "index_kind", "pattern"),
                     "code_bits": m.bits if hasattr(m, "bits") else None})
        wbits += w
        dense_w += numel
        bias_bits += b
    other = sum(32 * t.numel() for n, t in cmodel.state_dict().items()
                if not any(n.startswith(p + ".") for p in names) and t.is_floating_point())
    return {"weight_bits": wbits, "dense_weight_bits": 32 * dense_w, "bias_bits": bias_bits,
            "other_bits": other, "reduction": 32 * dense_w / wbits,
            "all_in": (32 * dense_w + bias_bits + other) / (wbits + bias_bits + other), "layers": rows}


def check_state_dict(cmodel, x, ctor):
    buf = io.BytesIO()
    torch.save(cmodel.state_dict(), buf)
    size = len(buf.getvalue())
    sd = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    fresh = ctor()
    fresh.load_state_dict(sd)
    fresh.eval(), cmodel.eval()
    with torch.no_grad():
        same = torch.equal(fresh(x), cmodel(x))
    return size, same


def empty_like_compressed(cmodel):
    """A fresh model of the same architecture whose compressed modules are empty (to load into)."""
    def ctor():
        m = copy.deepcopy(cmodel)
        for name, mod in list(m.named_modules()):
            if isinstance(mod, (SparseConv2d, SparseLinear)):
                for k in ("header", "index", "codes", "values", "scale"):
                    setattr(mod, k, getattr(mod, k)[:0].clone())
                mod._weight_cache = None
        return m
    return ctor


# ----------------------------------------------------------------------------------- main
def run_model(kind, args, data, log):
    xtr, ytr, xte, yte = data
    torch.manual_seed(0)
    if kind == "lenet":
        model, settings, lr = models.LeNet5(), LENET_SETTINGS, 1e-3
        ntrain, dense_ep, admm_ep, rt_ep = xtr.shape[0], args.dense_epochs, args.admm_epochs, args.retrain_epochs
    else:
        model, settings, lr = models.fmnist_vgg(), VGG_SETTINGS, 1e-3
        ntrain, dense_ep, admm_ep, rt_ep = args.vgg_train, args.vgg_dense_epochs, args.vgg_epochs, args.vgg_epochs
    if args.quick:
        ntrain, dense_ep, admm_ep, rt_ep = min(ntrain, 6000), 1, 1, 1
        settings = settings[::2] if kind == "lenet" else settings[:1]
    if args.settings:
        settings = [st for st in settings if st[0] in args.settings.split(",")]
    xtr, ytr = xtr[:ntrain], ytr[:ntrain]
    t0 = time.time()
    ckpt = os.path.join(args.out, f"dense_{kind}_{ntrain}_{dense_ep}.pt") if args.cache_dense else None
    if ckpt and os.path.exists(ckpt):
        model.load_state_dict(torch.load(ckpt, weights_only=True))
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        run_epochs(model, opt, xtr, ytr, dense_ep)
        if ckpt:
            torch.save(model.state_dict(), ckpt)
    base = accuracy(model, xte, yte)
    ndense = sum(m.weight.numel() for m in model.modules() if type(m) in (nn.Conv2d, nn.Linear))
    log(f"[{kind}] dense: top-1 {base:.2f}%  ({ndense} conv/linear weights, {dense_ep} epochs on {ntrain}, "
        f"{time.time() - t0:.0f}s)")
    results = [{"model": kind, "setting": "dense", "acc": base, "reduction": 1.0, "all_in": 1.0,
                "weight_bits": 32 * ndense, "kept": ndense}]
    steps = math.ceil(ntrain / 128)
    for name, setting in settings:
        t0 = time.time()
        if kind == "lenet":
            opt = ADMM.from_model(model, lenet_spec(setting), base=torch.optim.Adam, lr=lr, rho_growth=args.rho_growth,
                                  update_every=max(steps * admm_ep // 12, 10))
        else:
            opt = ADMM(vgg_groups(model, setting), base=torch.optim.Adam, lr=lr, rho_growth=args.rho_growth,
                       update_every=max(steps * admm_ep // 12, 10))
        run_epochs(model, opt, xtr, ytr, admm_ep, seed=1)
        res = opt.residuals()
        pre = accuracy(model, xte, yte)
        opt.hard_prune()
        hard = accuracy(model, xte, yte)
        for g in opt.param_groups:
            g["lr"] = lr * 0.5
        run_epochs(model, opt, xtr, ytr, rt_ep, seed=2)
        acc = accuracy(model, xte, yte)
        psets = [p for p in opt.pattern_sets() if p is not None]
        cmodel, names = compress(model, psets[0] if psets else None)
        cacc = accuracy(cmodel, xte, yte)
        bits = count_bits(cmodel, names)
        size, same = check_state_dict(cmodel, xte[:256], empty_like_compressed(cmodel))
        kept = sum(r["kept"] for r in bits["layers"])
        row = {"model": kind, "setting": name, "config": setting, "acc": acc, "acc_compressed": cacc,
               "acc_before_hard_prune": pre, "acc_after_hard_prune": hard, "kept": kept,
               "max_residual": max(res.values()), "file_bytes": size, "reload_identical": same,
               "seconds": time.time() - t0, **bits}
        results.append(row)
        per_layer = ", ".join(f"{r['layer']}:{r['kept']}/{r['weights']}@{r['code_bits']}b/{r['index']}={r['bits']}"
                              for r in bits["layers"])
        log(f"[{kind}] {name}: top-1 {acc:.2f}% (compressed model {cacc:.2f}%, ADMM end {pre:.2f}%, after hard "
            f"prune {hard:.2f}%), max residual {max(res.values()):.3f}; kept {kept}; weight bits "
            f"{bits['weight_bits']} -> {bits['reduction']:.0f}x (all-in {bits['all_in']:.1f}x); "
            f"state_dict {size} B, reload identical={same}; {time.time() - t0:.0f}s\n    {per_layer}")
        assert cacc == acc, "compressed model must compute what the pruned model computes"
        assert same
    return results


def write_report(results, args, path_md, path_png):
    lines = ["# Weight-storage experiment (ADMM pruning + quantization, Fashion-MNIST)", "",
             f"Command: `python benchmarks/storage_experiment.py{' --quick' if args.quick else ''}` "
             f"(torch {torch.__version__}, {torch.get_num_threads()} threads).", "",
             "| model | setting | top-1 % | Δ vs dense | kept weights | weight bits | reduction | all-in | "
             "state_dict bytes |", "|---|---|---|---|---|---|---|---|---|"]
    base = {}
    for r in results:
        if r["setting"] == "dense":
            base[r["model"]] = r["acc"]
        d = r["acc"] - base[r["model"]]
        lines.append(f"| {r['model']} | {r['setting']} | {r['acc']:.2f} | {d:+.2f} | {r['kept']} | "
                     f"{r['weight_bits']} | {r['reduction']:.0f}x | {r['all_in']:.1f}x | {r.get('file_bytes', '-')} |")
    lines += ["", "## How bits are counted", "",
              "- **weight bits** (the `reduction` column = 32 x number of conv/linear weights / weight bits): for every "
              "conv and linear layer, every array its compressed module stores for the weight, at the width it is "
              "stored in the state_dict (`storage_bits()` minus the bias): the packed header (index form/width, "
              "value scheme, bits, nnz, symbol count: ~4-6 bytes), the index (relative gap symbols incl. padding/"
              "escape entries, or a bitmap; PatternConv2d: pattern table + filter_ptr + kernel_channel + "
              "kernel_pattern at their dtype widths), the codes (bit-packed to whole bytes: kept weights are nonzero, "
              "so binary/ternary layers need 1 bit per kept weight) or fp32 values, and the fp32 per-layer scale.",
              "- **out of the weight count** (as in the papers' weight-storage numbers), listed in `all-in`: biases "
              "(fp32, 236 for LeNet-5 = 7,552 bits), BatchNorm weights/biases/running stats (VGG, fp32). `all-in` = "
              "(dense weights + biases + BN) / (stored weight bits + biases + BN), all fp32 except the compressed "
              "weights. The architecture (layer shapes) is code, not counted.",
              "- `state_dict bytes`: the real `torch.save` size of the compressed model's state_dict (includes the "
              "biases and ~0.5 KB of zip/pickle overhead per tensor, so it is far above bits/8 for tiny models); it "
              "loads back with `torch.load(weights_only=True)` into an empty model with identical outputs "
              "(checked every row).",
              "- top-1: full 10k Fashion-MNIST test set; the compressed model (SparseConv2d / SparseLinear / "
              "PatternConv2d) gives exactly the pruned model's accuracy (asserted).",
              "", "Per-layer (kept/weights @ code bits / index form = stored weight bits):", ""]
    for r in results:
        if r["setting"] != "dense":
            lines.append(f"- {r['model']} {r['setting']} {r['config']}: " + ", ".join(
                f"{x['layer']} {x['kept']}/{x['weights']} @{x['code_bits']}b/{x['index']} = {x['bits']}"
                for x in r["layers"]))
    with open(path_md, "w") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = sorted({r["model"] for r in results})
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        rs = [r for r in results if r["model"] == kind and r["setting"] != "dense"]
        ax.plot([r["reduction"] for r in rs], [r["acc"] for r in rs], "o-", label="ADMM + retrain")
        for r in rs:
            ax.annotate(r["setting"], (r["reduction"], r["acc"]), textcoords="offset points", xytext=(4, 4))
        ax.axhline(base[kind], color="k", ls="--", lw=1, label=f"dense fp32 ({base[kind]:.2f}%)")
        ax.axhline(base[kind] - 1.5, color="r", ls=":", lw=1, label="dense - 1.5 points")
        if kind == "lenet":
            ax.axvline(1000, color="g", ls=":", lw=1, label="1,000x")
        ax.set_xscale("log")
        ax.set_xlabel("weight-storage reduction (dense fp32 weight bits / stored bits)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{kind} on Fashion-MNIST")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path_png, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 6k images, 1 epoch per phase")
    ap.add_argument("--models", default="lenet,vgg")
    ap.add_argument("--dense-epochs", type=int, default=8)
    ap.add_argument("--admm-epochs", type=int, default=4)
    ap.add_argument("--retrain-epochs", type=int, default=6)
    ap.add_argument("--rho-growth", type=float, default=1.5, help="ADMM rho growth per Z-update (12 per phase)")
    ap.add_argument("--vgg-train", type=int, default=6000, help="VGG training images (cost)")
    ap.add_argument("--vgg-dense-epochs", type=int, default=2)
    ap.add_argument("--vgg-epochs", type=int, default=1, help="VGG ADMM and retrain epochs per setting")
    ap.add_argument("--settings", default="", help="comma-separated subset of the setting names (chained in order)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md/.png from the saved .json files")
    ap.add_argument("--cache-dense", action="store_true", help="save / reuse the dense model in --out")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    xtr, ytr = load_fmnist("train") if not args.report_only else (None, None)
    xte, yte = load_fmnist("test") if not args.report_only else (None, None)
    os.makedirs(args.out, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    logf = open(os.path.join(args.out, f"storage{suffix}_{args.models.replace(',', '_')}.log"), "w")

    def log(s):
        print(s, flush=True)
        logf.write(s + "\n")
        logf.flush()

    for kind in ([] if args.report_only else args.models.split(",")):
        results = run_model(kind, args, (xtr, ytr, xte, yte), log)
        with open(os.path.join(args.out, f"storage{suffix}_{kind}.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)
    # the report covers every model run so far (separate processes may run the models)
    results = []
    for k in ("lenet", "vgg"):
        path = os.path.join(args.out, f"storage{suffix}_{k}.json")
        if os.path.exists(path):
            with open(path) as f:
                results += json.load(f)
    write_report(results, args, os.path.join(args.out, f"storage{suffix}.md"),
                 os.path.join(args.out, f"storage_tradeoff{suffix}.png"))

if __name__ == "__main__":
    main()
