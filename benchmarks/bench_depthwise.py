"""MobileNet-V2's depthwise 3x3 layers (224x224 input, batch 1): the native NCHW kernel
(``patsparse::depthwise_conv3x3``, bias + ReLU6 in its output stage) against ``F.conv2d`` + clamp in
NCHW and in channels_last, same process and thread count, interleaved, medians of wall / CPU ms.
The totals weight each layer by how often MobileNet-V2 has it.

  flock /tmp/patsparse-bench.lock python benchmarks/bench_depthwise.py --threads 1
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import torch_patsparse  # noqa: F401  (registers the ops)

# (channels, input size, stride, layers of this shape in MobileNet-V2)
LAYERS = [(32, 112, 1, 1), (96, 112, 2, 1), (144, 56, 1, 1), (144, 56, 2, 1), (192, 28, 1, 2), (192, 28, 2, 1),
          (384, 14, 1, 4), (576, 14, 1, 2), (576, 14, 2, 1), (960, 7, 1, 3)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=21)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    op = torch.ops.patsparse.depthwise_conv3x3
    totals = {}
    with torch.no_grad():
        for c, hw, s, count in LAYERS:
            x, w, b = torch.randn(1, c, hw, hw), torch.randn(c, 1, 3, 3), torch.randn(c)
            xcl = x.contiguous(memory_format=torch.channels_last)
            runs = {"NCHW F.conv2d": lambda: F.conv2d(x, w, b, s, 1, 1, c).clamp_(0, 6),
                    "CL F.conv2d": lambda: F.conv2d(xcl, w, b, s, 1, 1, c).clamp_(0, 6),
                    "ours NCHW": lambda: op(x, w, b, [s, s], 0.0, 6.0)}
            wall = {k: [] for k in runs}
            cpu = {k: [] for k in runs}
            for f in runs.values():
                f(), f()
            for _ in range(args.reps):
                for k, f in runs.items():
                    c0, w0 = time.process_time(), time.perf_counter()
                    f()
                    wall[k].append((time.perf_counter() - w0) * 1e3)
                    cpu[k].append((time.process_time() - c0) * 1e3)
            med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in runs}
            for k, (wm, cm) in med.items():
                tw, tc = totals.get(k, (0.0, 0.0))
                totals[k] = (tw + wm * count, tc + cm * count)
            print(f"{c:4d} ch {hw:3d}x{hw:<3d} stride {s} (x{count}): "
                  + ", ".join(f"{k} {wm:.3f} / {cm:.3f}" for k, (wm, cm) in med.items()) + "  (wall / CPU ms)")
    print("MobileNet-V2 total: " + ", ".join(f"{k} {tw:.2f} / {tc:.2f}" for k, (tw, tc) in totals.items())
          + " (wall / CPU ms)")


if __name__ == "__main__":
    main()
