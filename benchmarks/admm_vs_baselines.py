"""ADMM against the simple baselines (one-shot projection + masked retraining, gradual cubic pruning)
on the main job's network and data, from one dense checkpoint, equal total epochs for every method.

    nice .venv/bin/python benchmarks/admm_vs_baselines.py            # the reduced-budget table
    nice .venv/bin/python benchmarks/admm_vs_baselines.py --methods admm --label admm-balance \\
        --admm balance=true                                           # add a row for an ADMM variant

Every run goes through the main job's own stages (torch_patsparse.cli.Job: constraint phase of
``--admm-epochs`` with ``admm.method`` = the method, hard prune + BatchNorm re-estimation, masked
retraining of ``--retrain-epochs``), so what is measured is what ``python -m torch_patsparse
--method M`` does. Columns: accuracy right after the prune (BN re-estimated, before any retraining:
for one-shot that is the projection of the dense model, for ADMM / gradual the hard prune at the end
of their phase) and the final accuracy. Results are merged into ``--json`` (keyed by setting, label,
seed) after every run, and the markdown table is rewritten from it.

Settings (constraints on the 3x3 convs; features.0 has Cin = 1 and gets pattern + quantize only; the
FC layers keep unstructured 0.2 at the same bit width):
    a: pattern 8 + connectivity 0.24 + 4-bit     b: pattern 8 + connectivity 0.1 + 3-bit
    c: pattern 8 + connectivity 0.05 + 2-bit
"""
import argparse
import json
import os
import sys
import time
import types

import torch

from torch_patsparse import cli

SETTINGS = {"a": (0.24, 4), "b": (0.1, 3), "c": (0.05, 2)}


def layers(keep: float, bits: int):
    q = {"type": "quantize", "bits": bits}
    return [{"match": "features.0.weight", "constraints": [{"type": "pattern", "k": 8}, q]},
            {"match": "features.*.weight",
             "constraints": [{"type": "pattern", "k": 8}, {"type": "connectivity", "keep": keep}, q]},
            {"match": "classifier.*.weight", "constraints": [{"type": "unstructured", "keep": 0.2}, q]}]


def parse_value(v: str):
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def make_job(a, seed: int, out: str, extra=None) -> cli.Job:
    over = {"train_limit": a.train_limit, "test_limit": a.test_limit, "batch_size": a.batch_size,
            "threads": a.threads, "seed": seed, "dense": {"epochs": a.dense_epochs},
            "admm": {"epochs": a.admm_epochs}, "retrain": {"epochs": a.retrain_epochs}}
    for k, v in (extra or {}).items():
        section, key = k.split(".", 1)
        over.setdefault(section, {})[key] = v
    cfg = cli.build_config(None, overrides=over)
    return cli.Job(cfg, types.SimpleNamespace(out=out, no_progress=True, data=None, interrupt_after=None))


def dense_checkpoint(a) -> str:
    path = os.path.join(a.work, "dense.pt")
    if not os.path.isfile(path):
        b = argparse.Namespace(**{**vars(a), "train_limit": a.dense_train_limit, "batch_size": a.dense_batch_size})
        job = make_job(b, 0, os.path.join(a.work, "dense"))
        job.log = lambda msg: print("  dense:", msg, flush=True)
        job.stage_dense()
        torch.save({"model": job.model.state_dict(), "acc": job.history["acc"]["dense"]}, path)
    return path


def table(results: dict) -> str:
    rows = sorted(results.values(), key=lambda r: (r["setting"], r["label"], r["seed"]))
    lines = ["| setting | method | seed | dense | after prune (BN re-est.) | final | final - dense | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['label']} | {r['seed']} | {r['dense']:.2f} | {r['pruned']:.2f} | "
                     f"{r['final']:.2f} | {r['final'] - r['dense']:+.2f} | {r['seconds'] / 60:.1f} |")
    return "\n".join(lines)


def small_cnn(bn: bool) -> torch.nn.Sequential:
    """The no-collapse check's network (not the main job's): two 3x3 conv blocks and a linear layer on
    the flattened 7x7 maps (~88 % on Fashion-MNIST after two short epochs, with or without BatchNorm)."""
    nn = torch.nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=not bn)] + ([nn.BatchNorm2d(cout)] if bn else []) + \
            [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return nn.Sequential(*block(1, 16), *block(16, 32), nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


def small_check(a) -> None:
    """No-collapse check: ``--small-seeds`` seeds of a small CNN (:func:`small_cnn`) at setting (b),
    over SGD and Adam, with and without BatchNorm. Per seed one dense model (``--small-epochs`` with a
    cosine LR), then for every method from a copy of it: constraint phase (constant LR), hard prune
    (+ BN re-estimation), retraining (cosine LR), ``--small-epochs`` each, with ``ps.ADMM``'s class
    defaults (no rho given; ``phase_steps`` = the phase, 8 Z-updates) plus ``--admm`` extras. Prints and
    writes min / mean of (final - dense) per configuration and method to ``--small-json``."""
    import copy
    import torch_patsparse as ps
    from torch_patsparse import constraints as C, data as D
    from torch_patsparse.train import evaluate, recalibrate_bn, train_epoch
    torch.set_num_threads(a.threads)
    x, y = D.load_split("train", None, a.small_train)
    xt, yt = D.load_split("test", None, a.test_limit)
    keep, bits = SETTINGS["b"]
    extra = {k.split(".", 1)[1]: v for k, v in a.extra.items()}
    out = {}
    if os.path.isfile(a.small_json):
        with open(a.small_json) as f:
            out = json.load(f)
    for bn in (True, False):
        for base, lr in ((torch.optim.SGD, 0.02), (torch.optim.Adam, 1e-3)):
            config = f"{'bn' if bn else 'no-bn'}/{base.__name__}"
            if a.small_configs and config not in a.small_configs.split(","):
                continue
            kw = {"momentum": 0.9} if base is torch.optim.SGD else {}
            steps = a.small_epochs * D.num_batches(x.shape[0], 64)
            runs = {m: [] for m in a.methods.split(",")}
            for seed in range(a.small_seeds):
                torch.manual_seed(seed)
                dense_model = small_cnn(bn)
                opt = base(dense_model.parameters(), lr=lr, **kw)
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
                gen = torch.Generator().manual_seed(seed)
                for _ in range(a.small_epochs):
                    train_epoch(dense_model, opt, x, y, 64, gen, show=False, scheduler=sched)
                dense = evaluate(dense_model, xt, yt, show=False)["acc"]
                for method in runs:
                    model = copy.deepcopy(dense_model)
                    gen = torch.Generator().manual_seed(1000 + seed)  # same data order for every method
                    convs = [m.weight for m in model if isinstance(m, torch.nn.Conv2d)]
                    rest = [p for p in model.parameters() if all(p is not c for c in convs)]
                    opt = ps.ADMM([{"params": convs[:1], "constraints": [C.Pattern(k=8), C.Quantize(bits=bits)]},
                                   {"params": convs[1:], "constraints": [C.Pattern(k=8), C.Connectivity(keep=keep),
                                                                         C.Quantize(bits=bits)]},
                                   {"params": rest}], base=base, lr=lr, method=method, phase_steps=steps,
                                  update_every=max(1, steps // 8), **kw, **(extra if method == "admm" else {}))
                    if method == "oneshot":
                        opt.hard_prune()
                    for _ in range(a.small_epochs):
                        train_epoch(model, opt, x, y, 64, gen, show=False)
                    opt.hard_prune()
                    recalibrate_bn(model, x, show=False)
                    pruned = evaluate(model, xt, yt, show=False)["acc"]
                    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)  # as the main job
                    for _ in range(a.small_epochs):
                        train_epoch(model, opt, x, y, 64, gen, show=False, scheduler=sched)
                    final = evaluate(model, xt, yt, show=False)["acc"]
                    runs[method].append({"seed": seed, "dense": dense, "pruned": pruned, "final": final})
                    print(f"  small {config} {method} seed {seed}: dense {dense:.2f} pruned {pruned:.2f} "
                          f"final {final:.2f}", flush=True)
            for method, rs in runs.items():
                drops = [r["final"] - r["dense"] for r in rs]
                key = f"{config}/{a.label if a.label and method == 'admm' else method}"
                out[key] = {"runs": rs, "min": min(drops), "mean": sum(drops) / len(drops),
                            "dense_mean": sum(r["dense"] for r in rs) / len(rs)}
                print(f"small {key}: final - dense min {min(drops):+.2f} mean {out[key]['mean']:+.2f}", flush=True)
            with open(a.small_json, "w") as f:
                json.dump(out, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="run the no-collapse check (small_check) instead")
    ap.add_argument("--small-seeds", type=int, default=10)
    ap.add_argument("--small-configs", help="subset of bn/SGD,bn/Adam,no-bn/SGD,no-bn/Adam (default: all)")
    ap.add_argument("--small-train", type=int, default=4000)
    ap.add_argument("--small-epochs", type=int, default=2, help="dense, constraint phase and retraining epochs each")
    ap.add_argument("--small-json", default="benchmarks/results/admm_vs_baselines.small.json")
    ap.add_argument("--settings", default="a,b,c")
    ap.add_argument("--methods", default="oneshot,gradual,admm")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--label", help="row label (default: the method); for variants given with --admm")
    ap.add_argument("--admm", action="append", default=[], metavar="KEY=VALUE",
                    help="extra [admm] config for this invocation, e.g. balance=true (repeatable)")
    ap.add_argument("--train-limit", type=int, default=3000, help="training images of the constraint / retrain phases")
    ap.add_argument("--dense-train-limit", type=int, default=8000, help="training images of the dense model")
    ap.add_argument("--dense-batch-size", type=int, default=128)
    ap.add_argument("--test-limit", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dense-epochs", type=int, default=4)
    ap.add_argument("--admm-epochs", type=int, default=2, help="constraint-phase epochs (every method)")
    ap.add_argument("--retrain-epochs", type=int, default=2)
    # 1: on the shared 2-core machine two threads spent ~7x the CPU time per image (spinning workers)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="/tmp/admm_vs_baselines")
    ap.add_argument("--json", default="benchmarks/results/admm_vs_baselines.json")
    ap.add_argument("--md", default="benchmarks/results/admm_vs_baselines.table.md")
    ap.add_argument("--merge", nargs="*", help="merge these result JSONs (runs done in parallel) into --json, "
                                               "rewrite --md, and exit")
    a = ap.parse_args()
    if a.merge is not None:
        results = {}
        for path in [a.json] * os.path.isfile(a.json) + a.merge:
            with open(path) as f:
                results.update(json.load(f))
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
        with open(a.md, "w") as f:
            f.write(table(results) + "\n")
        print(table(results))
        return
    os.makedirs(a.work, exist_ok=True)
    extra = {f"admm.{kv.split('=', 1)[0]}": parse_value(kv.split("=", 1)[1]) for kv in a.admm}
    if a.small:
        a.extra = extra
        return small_check(a)
    results = {}
    if os.path.isfile(a.json):
        with open(a.json) as f:
            results = json.load(f)
    dense = torch.load(dense_checkpoint(a), weights_only=False)
    print(f"dense checkpoint: {dense['acc']:.2f}%", flush=True)
    for setting in a.settings.split(","):
        keep, bits = SETTINGS[setting]
        for seed in (int(s) for s in a.seeds.split(",")):
            for method in a.methods.split(","):
                label = a.label or method
                t0 = time.time()
                job = make_job(a, seed, os.path.join(a.work, f"{setting}-{label}-{seed}"),
                               {"admm.method": method, **extra})
                job.cfg["layers"] = layers(keep, bits)
                cli.validate_config(job.cfg)
                job.model.load_state_dict(dense["model"])
                dense_acc = job.history["acc"]["dense"] = job.evaluate()  # on this run's test subset
                job.done = ["dense"]
                job.log = lambda msg, tag=f"{setting}/{label}/{seed}": print(f"  [{tag}] {msg}", flush=True)
                job.stage_admm()
                job.stage_retrain()
                acc = job.history["acc"]
                rec = {"setting": setting, "label": label, "method": method, "seed": seed, "dense": dense_acc,
                       "pruned": acc["oneshot_pruned"] if method == "oneshot" else acc["hard_pruned"],
                       "after_phase_bn": acc.get("admm_bn"), "final": acc["retrain"],
                       "residuals": job.history.get("residuals"), "seconds": time.time() - t0,
                       "config": {k: job.cfg[k] for k in ("admm", "retrain", "train_limit", "test_limit",
                                                          "batch_size")}}
                results[f"{setting}/{label}/{seed}"] = rec
                print(f"{setting} {label} seed {seed}: pruned {rec['pruned']:.2f} final {rec['final']:.2f} "
                      f"(dense {dense_acc:.2f}) {rec['seconds']:.0f}s", flush=True)
                os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
                with open(a.json, "w") as f:
                    json.dump(results, f, indent=1)
                with open(a.md, "w") as f:
                    f.write(f"Command: {' '.join(sys.argv)}\n\n{table(results)}\n")
    print(table(results))


if __name__ == "__main__":
    main()
