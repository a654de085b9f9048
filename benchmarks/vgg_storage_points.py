"""Weight-storage vs top-1 points of the VGG-style net, from main-job runs (``python -m torch_patsparse``
with a --config per setting, all starting from one dense.pt), as a table and a PNG.

    python benchmarks/vgg_storage_points.py main=runs/patsparse vs1=/tmp/vgg_storage/vs1 ... \\
        --png benchmarks/results/storage_tradeoff_vgg.png

Reads each OUT/summary.json: top-1 of the dense model and of the converted (compressed) model, and
``report_totals`` (``ps.compression_report`` over every conv + linear module: every stored bit of
values / codes, index arrays, pattern tables, scales and the fp32 FC biases, against fp32 dense).
"""
import argparse
import json
import os


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="LABEL=OUT_DIR of a finished main-job run")
    ap.add_argument("--png", help="write the plot here")
    a = ap.parse_args()
    rows = []
    for spec in a.runs:
        label, _, out = spec.partition("=")
        with open(os.path.join(out, "summary.json")) as f:
            s = json.load(f)
        t = s["report_totals"]
        rows.append((label, s["acc"]["dense"], s["acc"]["compressed"], t["stored_bits"], t["dense_bits"], t["ratio"],
                     t["mac_reduction"]))
    print("| setting | dense top-1 % | compressed top-1 % | Δ | stored bits (conv + FC) | dense fp32 bits | reduction | MAC reduction |")
    print("|---|---|---|---|---|---|---|---|")
    for label, dense, comp, bits, dbits, ratio, macs in rows:
        print(f"| {label} | {dense:.2f} | {comp:.2f} | {comp - dense:+.2f} | {bits} | {dbits} | {ratio:.1f}x | {macs:.1f}x |")
    if a.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4.2))
        ax.plot([r[5] for r in rows], [r[2] for r in rows], "o-", label="ADMM + retrain (main-job pipeline)")
        for r in rows:
            ax.annotate(r[0], (r[5], r[2]), textcoords="offset points", xytext=(4, 4))
        ax.axhline(rows[0][1], color="k", ls="--", lw=1, label=f"dense fp32 ({rows[0][1]:.2f}%)")
        ax.axhline(rows[0][1] - 1.5, color="r", ls=":", lw=1, label="dense - 1.5 points")
        ax.set_xscale("log")
        ax.set_xlabel("weight-storage reduction (conv + FC, every stored bit)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title("fmnist_vgg on Fashion-MNIST")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.png, dpi=120)


if __name__ == "__main__":
    main()
