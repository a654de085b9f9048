"""Whole-model latency: VGG-16, ResNet-18, ResNet-50, MobileNet-V2 (torch_patsparse.models, 224x224,
eval mode), ``ps.optimize_for_inference(ps.convert(model, layers="all"))`` against the best dense
baseline, same process, same thread count, interleaved repetitions, medians of wall and CPU time.

Weights: ``models.sparsify_random`` (random, with the benchmark sparsity structure: 3x3 convs 8
patterns of 4 + connectivity 0.25 in groups of 4; 1x1 convs 20% unstructured, MobileNet-V2 25%;
depthwise, stem and FC dense; non-trivial BatchNorm statistics).

Dense baseline = the fastest of: BatchNorm folded by torch.fx (``torch.fx.experimental.optimization
.fuse``) in NCHW and in channels_last, and ``ps.optimize_for_inference`` of the dense model (BatchNorm
folded, channels_last stem + pool, fast NCHW max-pool, depthwise 3x3 convs on the native NCHW kernel)
in NCHW and in channels_last. Ours runs NCHW (our kernels' layout). ``--profile`` adds a per-op breakdown of ours (torch.profiler, self CPU time
per forward) at batch 1, 1 thread.

  flock /tmp/patsparse-bench.lock python benchmarks/bench_models.py --markdown benchmarks/results/models.md
"""
import argparse
import os
import platform
import statistics
import sys
import time
import warnings

TARGETS = {"vgg16": 5.0, "resnet18": 3.0, "resnet50": 2.5, "mobilenet_v2": 1.5}  # batch 1, 1 thread (issue 14)


def build(name, group1x1=1):
    import torch
    import torch_patsparse as ps
    from torch_patsparse import models
    torch.manual_seed(0)
    dense = getattr(models, name)()
    models.sparsify_random(dense, keep3x3=0.25, group=4, patterns=8, keep1x1=0.25 if name == "mobilenet_v2" else 0.2,
                           group1x1=group1x1)
    dense.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convert lists the layers it leaves dense (stem, depthwise)
        converted = ps.convert(dense, layers="all").eval()
    return dense, converted


def dense_candidates(dense):
    import torch
    import torch.fx.experimental.optimization as fxo
    import torch_patsparse as ps
    folded = fxo.fuse(dense)
    folded_cl = fxo.fuse(dense).to(memory_format=torch.channels_last)
    opt = ps.optimize_for_inference(dense)
    opt_cl = ps.optimize_for_inference(dense).to(memory_format=torch.channels_last)
    return {"fx-fold NCHW": (folded, False), "fx-fold CL": (folded_cl, True),
            "optimized NCHW": (opt, False), "optimized CL": (opt_cl, True)}


def time_interleaved(runners, reps, warmup=2):
    """{name: (median wall ms, median CPU ms)}; one call of each runner per repetition, in turn."""
    for f in runners.values():
        for _ in range(warmup):
            f()
    wall = {k: [] for k in runners}
    cpu = {k: [] for k in runners}
    for _ in range(reps):
        for k, f in runners.items():
            c0, w0 = time.process_time(), time.perf_counter()
            f()
            wall[k].append((time.perf_counter() - w0) * 1e3)
            cpu[k].append((time.process_time() - c0) * 1e3)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in runners}


def profile_ops(model, x, iters=5, top=12):
    """[(op, self CPU ms per forward, share)] of the top ops, plus the total."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad():
        for _ in range(2):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                model(x)
    rows = [(e.key, e.self_cpu_time_total / 1e3 / iters) for e in prof.key_averages()]
    total = sum(ms for _, ms in rows)
    rows.sort(key=lambda r: -r[1])
    return [(k, ms, ms / total) for k, ms in rows[:top]], total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vgg16,resnet18,resnet50,mobilenet_v2")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--profile", action="store_true", help="per-op breakdown of ours at batch 1, 1 thread")
    p.add_argument("--markdown", default=None, help="write the tables (and the command) to this file")
    p.add_argument("--group1x1", type=int, default=1, help="1x1 convs: G consecutive output channels keep the same "
                   "positions (Unstructured(group=G), a Gx1 block structure; default 1: unstructured)")
    args = p.parse_args()

    import torch
    import torch_patsparse as ps

    names = [n for n in args.models.split(",") if n]
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    rows, profiles = [], {}
    for name in names:
        dense, converted = build(name, args.group1x1)
        ours = ps.optimize_for_inference(converted)
        candidates = dense_candidates(dense)
        for batch in batches:
            x = torch.randn(batch, 3, args.size, args.size)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                want = dense(x)
                err = float((ours(x) - converted(x)).norm() / converted(x).norm())
                dense_err = max(float((m(x_cl if cl else x) - want).norm() / want.norm())
                                for m, cl in candidates.values())
            for nt in threads:
                torch.set_num_threads(nt)
                runners = {k: (lambda m=m, cl=cl: m(x_cl if cl else x)) for k, (m, cl) in candidates.items()}
                runners["ours"] = lambda: ours(x)
                runners["converted"] = lambda: converted(x)
                with torch.no_grad():
                    t = time_interleaved(runners, args.reps)
                best = min(candidates, key=lambda k: t[k][0])
                row = dict(model=name, batch=batch, threads=nt, best=best, dense=t[best], ours=t["ours"],
                           converted=t["converted"], err=err, dense_err=dense_err,
                           all_dense={k: t[k][0] for k in candidates})
                rows.append(row)
                print(f"{name} batch {batch} threads {nt}: dense {best} {t[best][0]:.1f} ms, ours {t['ours'][0]:.1f} ms "
                      f"({t[best][0] / t['ours'][0]:.2f}x wall, {t[best][1] / t['ours'][1]:.2f}x CPU), converted "
                      f"unoptimized {t['converted'][0]:.1f} ms; dense variants "
                      + ", ".join(f"{k} {v:.1f}" for k, v in row["all_dense"].items())
                      + f"; rel. error ours vs converted {err:.1e}", flush=True)
        if args.profile:
            torch.set_num_threads(1)
            profiles[name] = profile_ops(ours, torch.randn(1, 3, args.size, args.size))
    if args.markdown:
        write_markdown(args, rows, profiles)


def write_markdown(args, rows, profiles):
    import torch
    import torch_patsparse as ps
    cmd = "python benchmarks/bench_models.py " + " ".join(sys.argv[1:])
    out = ["# Whole models: `optimize_for_inference(convert(model, layers=\"all\"))` vs the best dense baseline", "",
           f"Command: `flock /tmp/patsparse-bench.lock {cmd}`", "",
           f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs (shared; load "
           f"average at the end {os.getloadavg()[0]:.1f}), torch {torch.__version__}, kernel path "
           f"`{ps.ops.get_isa()}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
           "224x224, eval mode, random weights with the benchmark sparsity structure (`models.sparsify_random`: "
           "3x3 convs 8 patterns of 4 + connectivity 0.25 in groups of 4, 1x1 convs 20% unstructured"
           + (f" in {args.group1x1}x1 blocks (`group1x1={args.group1x1}`)" if args.group1x1 > 1 else "") + ", "
           "MobileNet-V2 25%; stem, depthwise and FC dense). Dense = fastest of BatchNorm folded by torch.fx in "
           "NCHW / channels_last and `ps.optimize_for_inference(dense)` in NCHW / channels_last (column "
           "*dense variant*). Medians of interleaved repetitions; CPU = process CPU time (all threads). "
           "*unoptimized* = `convert` alone (BatchNorm, activations, adds and NCHW max-pool as separate ops).", "",
           "| model | batch | threads | dense variant | dense ms | ours ms | speedup (wall) | speedup (CPU) | "
           "unoptimized ms | target (batch 1) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = f">= {TARGETS[r['model']]}x" if r["batch"] == 1 and r["threads"] == 1 and r["model"] in TARGETS else ""
        if r["batch"] == 1 and r["threads"] > 1 and r["model"] in TARGETS:
            target = "within 20% of 1 thread"
        out.append(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['best']} | {r['dense'][0]:.1f} | "
                   f"{r['ours'][0]:.1f} | {r['dense'][0] / r['ours'][0]:.2f}x | {r['dense'][1] / r['ours'][1]:.2f}x | "
                   f"{r['converted'][0]:.1f} | {target} |")
    errs = ", ".join(f"{r['model']} {r['err']:.1e}" for r in rows if r["threads"] == rows[0]["threads"]
                     and r["batch"] == rows[0]["batch"])
    out += ["", f"Relative error (norm) of ours against the unoptimized converted model: {errs}."]
    for name, (ops_, total) in profiles.items():
        out += ["", f"## Per-op breakdown of ours: {name}, batch 1, 1 thread (torch.profiler, self CPU time per "
                    f"forward; total {total:.1f} ms)", "", "| op | ms | share |", "|---|---|---|"]
        out += [f"| `{k}` | {ms:.2f} | {share:.0%} |" for k, ms, share in ops_]
    with open(args.markdown, "w") as f:
        f.write("\n".join(out) + "\n")
    print("wrote", args.markdown)


if __name__ == "__main__":
    main()
