"""The bond model's learning curve beside the Gaussian model's: training CPU-hours against molecule
stability and validity (issue 29).

python benchmarks/bond_learning_curve.py [--png docs/bond_learning_curve.png]

Gaussian model: ``campaign.json`` (EDM protocol at its evaluation sampler, 300 steps; the trunk
and its cooldown branches). Bond model: ``bond_campaign.json`` (its written graph at 100 steps,
and EDM's protocol on the same molecules' coordinates), one curve per sampler setting (the exact
posterior until step 17,662; the recommended late noise since; cooldown branches apart). Each
point is one evaluated checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def series() -> dict[str, list[tuple[float, float, float]]]:
    """(hours, molecule stability %, validity %) per curve."""
    gauss = json.loads((HERE / "campaign.json").read_text())["entries"]
    bonds_path = HERE / "bond_campaign.json"
    bonds = json.loads(bonds_path.read_text())["entries"] if bonds_path.is_file() else []
    point = lambda e: (e["hours"], 100 * mean(e["edm"]["molecule_stability"]), 100 * mean(e["edm"]["validity"]))  # noqa: E731
    out = {"Gaussian model, EDM protocol (300 steps), trunk": [point(e) for e in gauss if not e.get("branch")],
           "Gaussian model, cooldown branches (the shipped one at 12.5 h)": [point(e) for e in gauss if e.get("branch")]}
    groups = (("exact posterior", lambda e: exact(e)), ("recommended late noise", lambda e: not exact(e) and not e.get("branch")),
              ("cooldown branches", lambda e: bool(e.get("branch"))))
    for label, keep in groups:
        chosen = [e for e in bonds if keep(e)]
        out[f"bond model, written graph (100 steps, {label})"] = bond_points(chosen, "written_graph", "molecule_stable", "valid")
        out[f"bond model, EDM protocol on its coordinates ({label})"] = bond_points(chosen, "edm", "molecule_stability", "validity")
    return out


def bond_points(entries: list[dict], sub: str, stable: str, valid: str) -> list[tuple[float, float, float]]:
    """(hours, stability %, validity %) of bond-model entries, averaged over each entry's seeds."""
    return [(e["hours"], 100 * mean([r[sub][stable] for r in e["rows"]]), 100 * mean([r[sub][valid] for r in e["rows"]])) for e in entries]


def exact(entry: dict) -> bool:
    """Whether an entry was sampled with the exact ancestral posterior (no late-noise reduction)."""
    return float(entry.get("sampler_options", {}).get("late_noise", 1.0)) == 1.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--png", default=str(HERE.parent / "docs" / "bond_learning_curve.png"))
    a = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2), sharex=True)
    for label, points in series().items():
        points = sorted(points)
        if not points:
            continue
        hours = [p[0] for p in points]
        for ax, k in zip(axes, (1, 2)):
            ax.plot(hours, [p[k] for p in points], marker="o", label=label)
        print(label, [(round(h, 2), round(m, 1), round(v, 1)) for h, m, v in points])
    for ax, title in zip(axes, ("molecule stability (%)", "validity (%)")):
        ax.set_xlabel("training hours (2-core CPU)")
        ax.set_title(title)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=2)  # below the plots, clear of the curves
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.savefig(a.png, dpi=110)
    print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
