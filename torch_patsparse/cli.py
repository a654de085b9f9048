"""The main job: ``python -m torch_patsparse`` / ``patsparse``.

Compresses a VGG-style CNN on Fashion-MNIST end to end and shows what it achieved::

    dense      train the dense baseline (SGD, cosine LR)
    admm       ADMM phase: pattern + connectivity + 4-bit on the 3x3 convs, unstructured + 4-bit on FC
    retrain    hard prune, then masked retraining (cosine LR)
    convert    ps.convert -> PatternConv2d layers; accuracy of the converted model
    report     ps.compression_report, latency dense vs compressed, TorchScript file, plot, summary

A checkpoint is written after every epoch (OUT/checkpoint.pt) and after every stage
(OUT/<stage>.pt); ``--resume`` continues from OUT/checkpoint.pt with nothing lost (model,
optimizer incl. ADMM state, LR schedule, RNG states, stage and epoch).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict

# the old names of this module live on in their homes: config (schema, validation), pipeline (Job),
# summary (statistics, plot, table)
from .admm import METHODS, PENALTIES  # noqa: F401
from .data import BadData, DataNotFound
from .config import (DEFAULTS, QUICK, RETRAIN_ON, ConfigError, build_config,  # noqa: F401
                     make_constraint, read_config_file, resolve_layers, validate_config)
from .pipeline import CKPT_VERSION, STAGE_CONFIG, STAGES, Diverged, Interrupted, Job  # noqa: F401
from .summary import model_stats, plot, summary_table  # noqa: F401


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="patsparse",
        description="Compress a VGG-style CNN on Fashion-MNIST with pattern + connectivity pruning and 4-bit "
                    "quantization (one-shot projection by default, or ADMM / gradual pruning), convert it to PatternConv2d and report accuracy, size and latency.")
    p.add_argument("--config", help="TOML / YAML / JSON file overriding the defaults (see configs/default.toml)")
    p.add_argument("--out", default="runs/patsparse", help="output directory: checkpoints, plot, TorchScript, summary")
    p.add_argument("--data", help="directory with the Fashion-MNIST IDX files "
                                  "(default /usr/share/datasets/fashion-mnist or $PATSPARSE_DATA)")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated consecutive stages of {','.join(STAGES)} (default: all); the first "
                        "starts from OUT/<its predecessor>.pt")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (stage, epoch, model, "
                                                         "optimizer incl. ADMM state, LR schedule, RNG; "
                                                         "bit-exact at the same thread count)")
    p.add_argument("--quick", action="store_true", help="small subset and 2 epochs per stage (a few minutes); a "
                   "--config file's values win over it, --epochs etc. over both")
    p.add_argument("--method", choices=METHODS, help="constraint phase: admm (ADMM), oneshot (project at once, "
                   "then masked training) or gradual (cubic keep schedule); overrides admm.method")
    p.add_argument("--retrain-on", choices=RETRAIN_ON, help="masked retraining on the dense model with masks or "
                   "through the compressed modules (same result to rounding); overrides retrain.on")
    p.add_argument("--epochs", type=int, help="epochs for each of dense / admm / retrain (overrides the config)")
    p.add_argument("--train-limit", type=int, help="use the first N training images")
    p.add_argument("--test-limit", type=int, help="use the first N test images")
    p.add_argument("--threads", type=int, help="torch threads (default 2)")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")
    p.add_argument("--interrupt-after", type=int, help=argparse.SUPPRESS)  # testing: stop after N epochs
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides: Dict[str, Any] = {}
    if args.epochs is not None:
        for s in ("dense", "admm", "retrain"):
            overrides[s] = {"epochs": args.epochs}
    for key in ("train_limit", "test_limit", "threads", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.method is not None:
        overrides.setdefault("admm", {})["method"] = args.method
    if args.retrain_on is not None:
        overrides.setdefault("retrain", {})["on"] = args.retrain_on
    try:
        cfg = build_config(args.config, args.quick, overrides)
    except ConfigError as e:
        print(f"patsparse: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        try:
            print(json.dumps(cfg, indent=1))
        except BrokenPipeError:  # `--print-config | head`
            sys.stdout = open(os.devnull, "w")  # (so the interpreter's final flush does not raise again)
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        print(f"patsparse: unknown stage(s) {bad}" if bad else "patsparse: --stages names no stage",
              f"(stages: {','.join(STAGES)})", file=sys.stderr)
        return 2
    stages = [s for s in STAGES if s in stages]
    gap = [s for s in STAGES[STAGES.index(stages[0]):STAGES.index(stages[-1])] if s not in stages]
    if gap:  # a later stage must start from what this run's earlier one wrote
        print(f"patsparse: --stages {','.join(stages)} leaves out {','.join(gap)}: give consecutive stages "
              f"(the first one starts from OUT/<its predecessor>.pt)", file=sys.stderr)
        return 2
    checkpoint = os.path.join(args.out, "checkpoint.pt")
    if args.resume and not os.path.exists(checkpoint):  # (--out not created only to say so)
        print(f"patsparse: cannot continue: no checkpoint at {checkpoint}", file=sys.stderr)
        return 2
    if stages[0] != STAGES[0] and not os.path.exists(args.out):  # (not created only to say so)
        print(f"patsparse: cannot use --out {args.out!r}: it does not exist, and --stages {','.join(stages)} starts "
              "from what an earlier run wrote there", file=sys.stderr)
        return 2
    try:
        os.makedirs(args.out, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.out):  # writable: found now, not after the first epoch
            pass
    except OSError as e:
        print(f"patsparse: cannot use --out {args.out!r}: {e.strerror or e}", file=sys.stderr)
        return 2
    try:
        job = Job(cfg, args)
        # validate the layer rules against the real model before any training
        resolve_layers(job.model, cfg["layers"])
    except KeyboardInterrupt:
        print("\npatsparse: interrupted while loading the data", file=sys.stderr)
        return 130
    except (DataNotFound, BadData) as e:
        print(f"patsparse: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"patsparse: config error: {e}", file=sys.stderr)
        return 2
    if not args.resume and stages[0] == "dense" and os.path.exists(checkpoint):  # (said once the run can start)
        print(f"patsparse: {checkpoint} of an earlier run is replaced as this one goes (--resume continues it "
              "instead)", flush=True)
    try:
        if args.resume:
            job.load(checkpoint)
            job.log(f"resumed from {checkpoint}: stages done {job.done}, "
                    f"in progress {job.stage!r} epoch {job.epoch}")
        else:
            first = STAGES.index(stages[0])
            if first > 0:
                prev = STAGES[first - 1]
                job.load(os.path.join(args.out, prev + ".pt"), finished_stage=prev)
                job.log(f"starting from {args.out}/{prev}.pt")
        if "retrain" in stages and "retrain" not in job.done and "dense" in job.done:
            job.distillation()  # the teacher (OUT/dense.pt), if asked for, before any training
    except (FileNotFoundError, ValueError) as e:
        print(f"patsparse: cannot continue: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        for s in stages:
            if s in job.done:
                continue
            missing = [p for p in STAGES[:STAGES.index(s)] if p not in job.done]
            if missing:
                print(f"patsparse: stage {s!r} needs {missing} first", file=sys.stderr)
                return 2
            getattr(job, "stage_" + s)()
    except Interrupted as e:
        job.log(str(e))
        return 3
    except KeyboardInterrupt:
        print(f"\npatsparse: interrupted; {checkpoint} holds the last finished epoch: rerun with --resume to continue"
              if os.path.exists(checkpoint) else "\npatsparse: interrupted before the first epoch finished (nothing "
              "to resume: run again)", file=sys.stderr)
        return 130
    except Diverged as e:
        print(f"patsparse: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # an output the run cannot write (a full disk, a directory where a file goes)
        print(f"patsparse: cannot write to --out {args.out!r}: {e}", file=sys.stderr)
        return 2
    job.log(f"done in {time.time() - t0:.0f}s; outputs in {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
