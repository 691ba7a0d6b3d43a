"""The training campaign's learning curve: a markdown table and a PNG from ``campaign.json``.

python benchmarks/learning_curve.py [--data benchmarks/campaign.json] [--png docs/learning_curve.png] [--legs ckpt]

``campaign.json`` holds one entry per evaluated checkpoint (the shipped starting point and the end
of every campaign leg): cumulative epochs, steps and training hours (wall time on the machine that
trained it, per device), and the quality at the default sampler (ancestral, 300 steps, 1000
molecules per seed, EDM protocol; mean over the seeds given). Entries are added by hand after each
leg's evaluation (``benchmarks/sampler_quality.py``), so every number has its command beside it.
An entry marked ``"branch": true`` (a learning-rate cooldown off the campaign's trunk, which itself
goes on at a constant rate) is drawn as a star beside the line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
METRICS = (("atom_stability", "atom stab."), ("molecule_stability", "mol. stab."), ("validity", "valid"))


def mean(values) -> float:
    return sum(values) / len(values)


def table(entries: list[dict]) -> str:
    lines = ["| checkpoint | epochs | steps | training hours (device) | precision | atom stab. % | mol. stab. % | valid % | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        q = e["edm"]
        cells = [f"{100 * mean(q[k]):.1f}" + (f" ± {50 * abs(q[k][0] - q[k][1]):.1f}" if len(q[k]) == 2 else "") for k, _ in METRICS]
        lines.append(f"| {e['name']} | {e['epochs']:.1f} | {e['steps']:,} | {e['hours']:.2f} ({e['device']}) | {e.get('precision', '32')} | "
                     + " | ".join(cells) + f" | {len(q['atom_stability'])} |")
    return "\n".join(lines)


def leg_table(ckpt_path: str) -> str:
    """The training record of a checkpoint, one row per leg (the warm start's legs first)."""
    import torch

    record = torch.load(ckpt_path, map_location="cpu", weights_only=True)["moldiff_record"]
    lines = ["| leg | device | precision | steps (run's own count) | epoch at end | wall time |", "|---|---|---|---|---|---|"]
    for k, r in enumerate(record, 1):
        lines.append(f"| {k} | {r['device']} | {r.get('precision', '32')} | {r['first_step']:,} → {r['last_step']:,} | "
                     f"{r['epoch']} | {r['seconds'] / 60:.0f} min |")
    return "\n".join(lines)


def plot(entries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, xkey, xlabel in ((axes[0], "epochs", "cumulative epochs"), (axes[1], "hours", "cumulative training hours (2-core CPU)")):
        trunk = [e for e in entries if not e.get("branch")]
        branches = [e for e in entries if e.get("branch")]  # a cooldown off the trunk: a point, not part of the line
        for key, label in METRICS:
            line, = ax.plot([e[xkey] for e in trunk], [100 * mean(e["edm"][key]) for e in trunk], "o-", label=label)
            if branches:
                ax.plot([e[xkey] for e in branches], [100 * mean(e["edm"][key]) for e in branches], "*", ms=10, color=line.get_color())
        ax.axhline(82.0, color="grey", ls=":", lw=1)
        ax.axhline(50.0, color="grey", ls="--", lw=1)
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% (EDM protocol, 300 steps)")
    axes[0].legend(loc="lower right", fontsize=8)
    axes[1].text(0.02, 83.5, "EDM mol. stab. 82.0", fontsize=7, color="grey", transform=axes[1].get_yaxis_transform())
    axes[1].text(0.02, 51.5, "bar: mol. stab. 50", fontsize=7, color="grey", transform=axes[1].get_yaxis_transform())
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE / "campaign.json"))
    ap.add_argument("--png", default=str(HERE.parent / "docs" / "learning_curve.png"))
    ap.add_argument("--legs", default=None, help="also print the leg table of this checkpoint's training record")
    a = ap.parse_args()
    if a.legs:
        print(leg_table(a.legs) + "\n")
    entries = json.loads(Path(a.data).read_text())["entries"]
    print(table(entries))
    plot(entries, Path(a.png))
    print(f"\nwrote {a.png}")


if __name__ == "__main__":
    main()
