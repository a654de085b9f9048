"""The main job's summary: per-layer statistics of the compressed model, the plot, the table."""
from typing import Any, Dict

import torch

from .nn import PatternConv2d


def model_stats(dense: torch.nn.Module, comp: torch.nn.Module) -> Dict[str, Any]:
    """Per-layer density, kept 3x3 kernels, pattern usage and storage of the compressed model ``comp``;
    the densities are read from ``dense``, the pruned dense model it was converted from (same weights)."""
    layers = []
    usage: Dict[tuple, int] = {}
    bits = dense_bits = kernels = kept = 0
    for name, p in dense.named_parameters():
        if p.dim() >= 2:
            layers.append({"name": name, "shape": list(p.shape), "density": float((p != 0).float().mean())})
    for name, m in comp.named_modules():
        if isinstance(m, PatternConv2d):
            w = m.to_dense().weight.detach()
            cout, cin = w.shape[:2]
            kernels += cout * cin
            nz_kernels = int((w.flatten(2) != 0).any(-1).sum())
            kept += int(m.kernel_pattern.numel())
            positions = m.patterns.long()
            for pid, count in zip(*torch.unique(m.kernel_pattern.long(), return_counts=True)):
                key = tuple(int(v) for v in positions[int(pid)])
                usage[key] = usage.get(key, 0) + int(count)
            sb = m.storage_bits()
            bits += sum(sb.values())
            dense_bits += m.dense_bits()
            for rec in layers:
                if rec["name"] == name + ".weight":
                    rec.update(kernels=cout * cin, kept_kernels=int(m.kernel_pattern.numel()),
                               nonzero_kernels=nz_kernels, entries=int(m.patterns.shape[1]),
                               storage_bits=sum(sb.values()), dense_bits=m.dense_bits())
    return {"layers": layers, "pattern_usage": sorted(usage.items(), key=lambda kv: -kv[1]),
            "conv_kernels": kernels, "conv_kept_kernels": kept, "conv_storage_bits": bits,
            "conv_dense_bits": dense_bits}


def plot(stats: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r["name"].replace(".weight", "") for r in stats["layers"]]
    a.bar(range(len(names)), [100 * r["density"] for r in stats["layers"]], color="tab:blue")
    a.set_xticks(range(len(names)))
    a.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    a.set_ylabel("nonzero weights (%)")
    a.set_title("per-layer weight density")
    for i, r in enumerate(stats["layers"]):
        a.text(i, 100 * r["density"] + 1, f"{100 * r['density']:.1f}", ha="center", fontsize=7)
    usage = stats["pattern_usage"]
    labels = ["".join("x" if i in set(pos) else "." for i in range(9)) for pos, _ in usage]
    labels = [f"{s[0:3]}/{s[3:6]}/{s[6:9]}" for s in labels]
    b.bar(range(len(usage)), [c for _, c in usage], color="tab:orange")
    b.set_xticks(range(len(usage)))
    b.set_xticklabels(labels, rotation=45, ha="right", fontsize=8, family="monospace")
    b.set_ylabel("kept 3x3 kernels")
    b.set_title("pattern usage (all 3x3 convs; rows top/mid/bottom)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(history: Dict[str, Any], stats: Dict[str, Any]) -> str:
    acc = history["acc"]
    lat = history.get("latency_ms", {})
    dense, comp = (round(acc.get(k, float("nan")), 2) for k in ("dense", "compressed"))
    # (the delta of the rounded accuracies shown, so the three rows agree)
    rows = [("dense top-1 (%)", f"{dense:.2f}"), ("compressed top-1 (%)", f"{comp:.2f}"),
            ("delta (points)", f"{comp - dense:+.2f}")]
    if stats["conv_kernels"]:
        entries = sorted({r["entries"] for r in stats["layers"] if "entries" in r})
        rows += [("kept 3x3 kernels (PatternConv2d layers)", f"{stats['conv_kept_kernels']}/{stats['conv_kernels']} "
                                      f"({100 * stats['conv_kept_kernels'] / stats['conv_kernels']:.1f}%)"),
                 ("weights per kept kernel", f"{'/'.join(map(str, entries))} of 9"),
                 ("patterns used", f"{len(stats['pattern_usage'])}"),
                 ("PatternConv2d storage (bits)",
                  f"{stats['conv_storage_bits']} vs {stats['conv_dense_bits']} dense fp32"),
                 ("PatternConv2d compression ratio",
                  f"{stats['conv_dense_bits'] / max(stats['conv_storage_bits'], 1):.1f}x")]
    tot = history.get("report_totals")
    if tot:
        rows.append(("conv + FC compression ratio (report)", f"{tot['ratio']:.1f}x"))
        if "model_ratio" in tot:
            rows.append(("whole state_dict compression ratio (BN etc. included)", f"{tot['model_ratio']:.1f}x"))
        if tot.get("mac_reduction"):
            rows.append(("conv + FC MAC reduction", f"{tot['mac_reduction']:.1f}x"))
    bits = history.get("weight_bits")
    if bits:
        rows.append(("weight bits", bits))
    for b in sorted(lat.get("dense", {})):
        d, c = lat["dense"][b], lat["compressed"][b]
        rows.append((f"latency batch {b} (ms) dense / compressed", f"{d:.3f} / {c:.3f}  (speedup {d / c:.2f}x)"))
    ts = history.get("torchscript", {})
    rows.append(("TorchScript", ts.get("path", ts.get("error", "-"))))
    w = max(len(k) for k, _ in rows)
    lines = ["| " + "metric".ljust(w) + " | value |", "|" + "-" * (w + 2) + "|-------|"]
    lines += [f"| {k.ljust(w)} | {v} |" for k, v in rows]
    return "\n".join(lines)
