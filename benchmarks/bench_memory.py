"""Memory and shipped size of a converted model against the dense one (issue 14, "Memory and
shipped size").

For each model (default: ResNet-50 from torch_patsparse.models, random weights with the benchmarks'
sparsity structure from ``sparsify_random``: 3x3 8 patterns + connectivity 0.25 in groups of 4, 1x1
20% unstructured; BatchNorm kept), dense and ``ps.convert(layers="all")``:

- sizes: ``torch.save(state_dict)``, ``ps.export.torchscript`` (scripted), ``ps.export.mobile``
  (lite interpreter) and a traced TorchScript file (``torch.jit.trace``), each / the compressed
  state_dict (target: exported files <= 1.1x);
- resident memory growth: a fresh Python process imports torch + torch_patsparse, builds the
  input, reads VmRSS, loads the traced file, runs 3 forwards (batch 1, 224x224, 1 thread), reads
  VmRSS (growth) and VmHWM (peak growth) again. Target: converted <= 0.5x dense. Median of --runs.

  python benchmarks/bench_memory.py --out benchmarks/results/memory.md
"""
import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import warnings

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch_patsparse as ps  # noqa: E402
from torch_patsparse import models  # noqa: E402

MiB = 1024.0 * 1024.0

PROBE = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[2])
import torch_patsparse  # registers the ops the file calls
torch.set_num_threads(1)
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
x = torch.randn(1, 3, 224, 224)
rss0 = status("VmRSS")
m = torch.jit.load(sys.argv[1])
with torch.no_grad():
    for _ in range(3):
        m(x)
print(json.dumps({"growth": status("VmRSS") - rss0, "peak": status("VmHWM") - rss0}))
"""


def file_size(fn) -> int:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f")
        fn(path)
        return os.path.getsize(path)


def state_dict_bytes(model) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def resident_growth(traced_path: str, runs: int):
    out = []
    for _ in range(runs):
        r = subprocess.run([sys.executable, "-c", PROBE, traced_path, ROOT], capture_output=True, text=True,
                           check=True)
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return statistics.median(o["growth"] for o in out), statistics.median(o["peak"] for o in out)


def measure(name, model, runs, workdir):
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    traced_path = os.path.join(workdir, name + ".traced.pt")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, x).save(traced_path)
        row = {"state_dict": state_dict_bytes(model),
               "torchscript": file_size(lambda p: ps.export.torchscript(model, p)),
               "mobile": file_size(lambda p: ps.export.mobile(model, p)),
               "traced": os.path.getsize(traced_path)}
    row["growth"], row["peak"] = resident_growth(traced_path, runs)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet50"], choices=["resnet18", "resnet50", "mobilenet_v2", "vgg16"])
    p.add_argument("--runs", type=int, default=3, help="fresh processes per resident-memory measurement")
    p.add_argument("--bits", type=int, nargs="*", default=[4],
                   help="also measure ps.convert(layers='all', bits=B) for each B (quantized storage)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    lines = ["# Memory and shipped size: converted vs dense", "",
             f"torch {torch.__version__}. Random weights with the benchmarks' sparsity (`sparsify_random`: 3x3 "
             "8 patterns + connectivity 0.25 group 4, 1x1 20% unstructured, fp32 values), converted with "
             "`ps.convert(layers=\"all\")` (fp32 values; `bits=B` rows: quantized with `bits=B`). Files: `torch.save(state_dict)`, `ps.export.torchscript`, "
             "`ps.export.mobile`, `torch.jit.trace(...).save`; ratio = file / the converted state_dict. "
             "Resident memory: a fresh process loads the traced file and runs 3 forwards (batch 1, 224x224, "
             f"1 thread); growth of VmRSS (and of the peak VmHWM) over the process before loading, median of "
             f"{args.runs} processes.", "",
             "Command: `python benchmarks/bench_memory.py --out benchmarks/results/memory.md`", "",
             "| model | state_dict MiB | TorchScript MiB (x sd) | mobile MiB (x sd) | traced MiB (x sd) "
             "| RSS growth MiB | peak growth MiB | growth vs dense |",
             "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            dense = models.sparsify_random(getattr(models, name)()).eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                conv = ps.convert(dense, layers="all").eval()
            rows = {"dense": measure(name + "_dense", dense, args.runs, work),
                    "converted": measure(name + "_conv", conv, args.runs, work)}
            for bits in args.bits:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    q = ps.convert(dense, layers="all", bits=bits).eval()
                rows[f"converted bits={bits}"] = measure(f"{name}_conv{bits}", q, args.runs, work)
            for kind, r in rows.items():
                sd = r["state_dict"]
                rel = r["growth"] / rows["dense"]["growth"]
                lines.append(f"| {name} {kind} | {sd / MiB:.1f} | {r['torchscript'] / MiB:.1f} "
                             f"({r['torchscript'] / sd:.2f}x) | {r['mobile'] / MiB:.1f} ({r['mobile'] / sd:.2f}x) | "
                             f"{r['traced'] / MiB:.1f} ({r['traced'] / sd:.2f}x) | {r['growth'] / MiB:.1f} | "
                             f"{r['peak'] / MiB:.1f} | {rel:.2f}x |")
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
