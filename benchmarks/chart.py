"""PNG chart of a benchmark run: speed-up over torch.nn per case."""

from __future__ import annotations


def write_chart(results, path, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['device']} {r['op']} {r['config']} {r['fmt']} {r['mode']} {r['dtype']}" for r in results]
    speed = [r["speedup"] for r in results]
    pct = [r["pct_copy"] for r in results]
    h = max(3.0, 0.28 * len(results) + 1.2)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, h), sharey=True)
    ys = list(range(len(results)))[::-1]
    a1.barh(ys, speed, color=["tab:green" if s >= 1 else "tab:red" for s in speed])
    a1.axvline(1.0, color="k", lw=0.8)
    a1.set_xscale("log")
    a1.set_yticks(ys)
    a1.set_yticklabels(labels, fontsize=7)
    a1.set_xlabel("speed-up over torch.nn (log scale, >1 is faster)")
    for y, s in zip(ys, speed):
        a1.text(s, y, f" {s:.2f}x", va="center", fontsize=6)
    a2.barh(ys, pct, color="tab:blue")
    a2.axvline(50, color="k", lw=0.8, ls="--")
    a2.set_xlabel("achieved bandwidth, % of a plain copy in the same run")
    title = f"cnnkernels {meta['cnnkernels']} vs torch {meta['torch']}, {meta['threads']} CPU threads"
    if meta.get("gpu"):
        title += f", {meta['gpu']}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
