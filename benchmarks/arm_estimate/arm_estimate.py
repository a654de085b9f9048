#!/usr/bin/env python3
"""ESTIMATED NEON speed of the pattern-conv forward on phone cores (no ARM machine is used).

For each ResNet-18 3x3 layer (batch 1, one core) and sparsity (pattern only; connectivity 0.25;
connectivity 0.25 with group 4), and for each compiler (aarch64 g++-12, clang-19 -O3 -march=armv8.2-a):
  1. builds driver.cpp (kernel core + NEON micro-kernels) and runs it under qemu-aarch64 with our TCG
     plugin (plugin.c): the guest instructions of one whole plan_forward (slab copies, tiles, output
     scatter), and the executed instruction trace of one dominant tile call;
  2. runs llvm-mca-19 on that trace (disassembled by llvm-mc-19) for two cores. LLVM 19 has no model
     of its own for either (-mcpu=cortex-a76 / cortex-x1 fall back to the Cortex-A57 model), so:
     Cortex-A76 = Neoverse-N1 model (an A76 derivative) at dispatch width 4; Cortex-X1 = Neoverse-V1
     model (an X1 derivative, 4 128-bit vector pipes) at dispatch width 5 (X1 decodes 5 per cycle);
  3. estimated layer cycles = instructions of the layer x (cycles per instruction of the traced
     tile); dense yardstick cycles = dense MACs / 4 x (cycles per FMLA of a standard 8x12 fp32 NEON
     GEMM micro-kernel under the same model: broadcast A by element, vector B, 24 FMLAs per k step,
     no im2col or packing cost, i.e. flattering to dense).
Prints per-layer estimated speedups over the yardstick, instructions per useful vector FMA
(useful = kept weights x output pixels / 4) and the traced tile's share of the model's FMA peak.
What this cannot see (caches beyond L1 hits, branch mispredictions, frequency and thermal limits):
docs/MOBILE.md. It is an ESTIMATE, never a measurement.

  python3 benchmarks/arm_estimate/arm_estimate.py [--quick] [--out benchmarks/results/arm_estimate.md]
Needs aarch64-linux-gnu-g++, qemu-aarch64 (with plugin support), gcc, clang-19, llvm-mc-19, llvm-mca-19.
"""
import argparse
import math
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.join(ROOT, "benchmarks", "arm_estimate")
BUILD = os.path.join(ROOT, "build", "arm_estimate")
SYSROOT = "/usr/aarch64-linux-gnu"

# (Cin, Cout, input H = W, stride): the 7 distinct 3x3 convolutions of ResNet-18 at 224x224, pad 1.
LAYERS = [(64, 64, 56, 1), (64, 128, 56, 2), (128, 128, 28, 1), (128, 256, 28, 2), (256, 256, 14, 1),
          (256, 512, 14, 2), (512, 512, 7, 1)]
CONFIGS = [("pattern only", 1.0, 1), ("connectivity 0.25", 0.25, 1), ("connectivity 0.25, group 4", 0.25, 4)]
CPUS = [("Cortex-A76", ["-mcpu=neoverse-n1", "-dispatch=4"]), ("Cortex-X1", ["-mcpu=neoverse-v1", "-dispatch=5"])]
FLAGS = ["-std=c++17", "-O3", "-march=armv8.2-a", "-DNDEBUG"]
COMPILERS = [("g++-12", ["aarch64-linux-gnu-g++"]), ("clang-19", ["clang++-19", "--target=aarch64-linux-gnu"])]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def build():
    os.makedirs(BUILD, exist_ok=True)
    plugin = os.path.join(BUILD, "plugin.so")
    run(["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-fvisibility=hidden", "-o", plugin, os.path.join(HERE, "plugin.c")])
    srcs = [os.path.join(HERE, "driver.cpp")]
    for d in ("csrc/kernels", "arm/kernels"):
        srcs += sorted(os.path.join(ROOT, d, f) for f in os.listdir(os.path.join(ROOT, d)) if f.endswith(".cpp"))
    drivers = {}
    for name, cxx in COMPILERS:
        exe = os.path.join(BUILD, "driver_" + name.split("-")[0].replace("+", "x"))
        run(cxx + FLAGS + ["-I" + ROOT, "-I" + os.path.join(ROOT, "csrc"), "-o", exe] + srcs + ["-lpthread"])
        drivers[name] = exe
    return plugin, drivers


def qemu_run(plugin, exe, args):
    """Returns (driver's key/value output, instructions counted, traced tile encodings)."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as f:
        out = run(["qemu-aarch64", "-L", SYSROOT, "-plugin", f"{plugin},out={f.name},trace=1", exe] + [str(a) for a in args])
        lines = f.read().split()
    info = dict(l.split() for l in out.strip().splitlines())
    count = int(lines[lines.index("count") + 1])
    n = int(lines[lines.index("trace") + 1])
    start = lines.index("trace") + 2
    return info, count, lines[start:start + n]


def disassemble(encodings):
    data = "\n".join(" ".join(f"0x{e[i:i + 2]}" for i in (6, 4, 2, 0)) for e in encodings)
    asm = run(["llvm-mc-19", "--disassemble", "-triple=aarch64-linux-gnu", "-mattr=+v8.2a,+fullfp16,+dotprod,+rcpc"],
              input=data)
    lines = [l.strip() for l in asm.splitlines() if l.strip() and not l.strip().startswith(".")]
    # The driver's call into the tile and the tile's return: llvm-mca cannot model them (it gives a
    # call 100 cycles of latency); two instructions per tile call.
    return [l for l in lines if l.split()[0] not in ("bl", "blr", "ret")]


def mca_cycles(asm_lines, cpu_flags):
    """llvm-mca cycles per pass over asm_lines (steady state over several iterations)."""
    iters = max(5, 200000 // max(1, len(asm_lines)))
    out = run(["llvm-mca-19", "-mtriple=aarch64", f"-iterations={iters}"] + cpu_flags, input="\n".join(asm_lines) + "\n")
    return int(re.search(r"Total Cycles:\s+(\d+)", out).group(1)) / iters


def yardstick():
    """Standard 8x12 fp32 GEMM micro-kernel, one k step (24 accumulators v8..v31)."""
    body = ["ldp q0, q1, [x0], #32", "ldp q2, q3, [x1], #32", "ldr q4, [x1], #16"]
    for i in range(8):
        for j in range(3):
            body.append(f"fmla v{8 + 3 * i + j}.4s, v{2 + j}.4s, v{i // 4}.s[{i % 4}]")
    return body + ["subs x2, x2, #1", "b.ne #-116"]


def peak_stream():
    return [f"fmla v{8 + i}.4s, v{i % 4}.4s, v5.s[{i % 4}]" for i in range(24)]


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the 64->64 56x56 layer")
    ap.add_argument("--out", help="also write the markdown table here")
    a = ap.parse_args()
    plugin, drivers = build()
    layers = LAYERS[:1] if a.quick else LAYERS
    ys = {}
    for cpu, flags in CPUS:
        ys[cpu] = (mca_cycles(yardstick(), flags) / 24, 24 / mca_cycles(peak_stream(), flags))  # cycles/FMLA, peak FMLA/cycle
    rows = []  # (compiler, cpu, layer, config, speedup, ipf, tile_peak, info)
    for comp, _ in COMPILERS:
        for (cin, cout, hw, st) in layers:
            for cname, keep, group in CONFIGS:
                info, count, enc = qemu_run(plugin, drivers[comp], [cin, cout, hw, st, keep, group])
                asm = disassemble(enc)
                fmla = sum(1 for l in asm if l.startswith("fmla"))
                vfma = int(info["useful_macs"]) / 4
                ipf = count / vfma
                for cpu, flags in CPUS:
                    cyc = mca_cycles(asm, flags)
                    est = count * cyc / len(asm)
                    dense = int(info["dense_macs"]) / 4 * ys[cpu][0]
                    rows.append(dict(comp=comp, cpu=cpu, layer=(cin, cout, hw, st), cfg=cname, speedup=dense / est,
                                     ipf=ipf, tile_peak=fmla / cyc / ys[cpu][1], insns=count, tile=info, trace=len(asm),
                                     fmla=fmla))
                print(f"{comp:9s} {cin}->{cout} {hw}x{hw} s{st} {cname:27s} insns {count:>10d}  ipf {ipf:.2f}  "
                      + "  ".join(f"{r['cpu']} {r['speedup']:.2f}x (tile {100 * r['tile_peak']:.0f}% peak)"
                                  for r in rows[-len(CPUS):]), file=sys.stderr, flush=True)
    md = table(rows, ys, layers)
    print(md)
    if a.out:
        with open(a.out, "w") as f:
            f.write(md)


def table(rows, ys, layers):
    L = ["# NEON on phone cores: ESTIMATED speedup (qemu instruction counts + llvm-mca; no ARM hardware)", "",
         "`python3 benchmarks/arm_estimate/arm_estimate.py --out benchmarks/results/arm_estimate.md`",
         "",
         "**An estimate, not a measurement.** One ResNet-18 3x3 layer at a time, batch 1, one core, fp32. "
         "Instructions of one whole `plan_forward` (slab copies, NEON tiles, output scatter) counted under "
         "qemu-aarch64 by our TCG plugin; cycles per instruction from llvm-mca-19 on the executed trace of the "
         "dominant tile (Cortex-A76 = Neoverse-N1 model at dispatch 4, Cortex-X1 = Neoverse-V1 model at "
         "dispatch 5; LLVM 19 has no A76/X1 models of its own). Yardstick: a standard 8x12 fp32 NEON GEMM "
         "micro-kernel at the dense layer's MACs, no im2col/packing cost (flattering to dense); llvm-mca puts it at "
         + ", ".join(f"{100 / (ys[c][0] * ys[c][1]):.0f}% of FMA peak on the {c} model" for c, _ in CPUS)
         + ". Sparsity: 8 patterns of 4 weights; connectivity keeps 25% of kernels; group 4 = 4 consecutive "
         "filters share their kernels. The estimate assumes L1 hits and perfect branch prediction and knows "
         "nothing about clocks or heat (docs/MOBILE.md, last section).", ""]
    L += ["## Geomean of the 7 layers: estimated speedup over the dense yardstick", "",
          "| build | core | " + " | ".join(c for c, _, _ in CONFIGS) + " |", "|---|---|" + "---|" * len(CONFIGS)]
    for comp, _ in COMPILERS:
        for cpu, _ in CPUS:
            cells = [geomean([r["speedup"] for r in rows if r["comp"] == comp and r["cpu"] == cpu and r["cfg"] == c])
                     for c, _, _ in CONFIGS]
            L.append(f"| {comp} | {cpu} | " + " | ".join(f"{x:.2f}x" for x in cells) + " |")
    L += ["", "## Per layer (estimated Cortex-A76 speedup; instructions per useful vector FMA; traced tile's share of "
          "the A76 model's FMA peak)", "",
          "| build | layer | " + " | ".join(c for c, _, _ in CONFIGS) + " |", "|---|---|" + "---|" * len(CONFIGS)]
    for comp, _ in COMPILERS:
        for layer in layers:
            cells = []
            for c, _, _ in CONFIGS:
                r = next(r for r in rows if r["comp"] == comp and r["cpu"] == "Cortex-A76" and r["cfg"] == c
                         and r["layer"] == layer)
                t = r["tile"]
                cells.append(f"{r['speedup']:.2f}x, {r['ipf']:.2f} ins/FMA, tile G{t['tile_G']}V{t['tile_V']} "
                             f"{100 * r['tile_peak']:.0f}%")
            cin, cout, hw, st = layer
            L.append(f"| {comp} | {cin}->{cout} {hw}x{hw} s{st} | " + " | ".join(cells) + " |")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
