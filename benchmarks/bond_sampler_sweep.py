"""Sampler settings of the bond model, read on one exported checkpoint (issue 29): which choices
the sampler's defaults should take (they took late_noise 0.5 for t <= 0.5 from this sweep), and
whether more network evaluations would help.

python benchmarks/bond_sampler_sweep.py --export outputs/train/bonds_campaign/exports/step_17662.ckpt [--n 500] [--seed 0]

Each row samples ``--n`` molecules at one setting (the same seed, so rows differ only by the
setting) and judges them as ``bond_campaign_leg.py`` does. Appends to
``benchmarks/results_bond_sampler_sweep.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bond_campaign_leg import SAMPLE_BATCH, quality

from moldiff.metrics.reference import reference_stats
from moldiff.model.bond_model import BondDiffusionModel
from moldiff.nn.cpu_tuning import tune_cpu_allocator

HERE = Path(__file__).resolve().parent
EXACT = {"late_noise": 1.0}  # the exact ancestral posterior (no late-noise reduction)
SETTINGS = {  # name: (steps, options); the model's recommended options apply under each unless overridden
    "exact posterior: 100 steps, uniform grid": (100, EXACT),
    "late_noise 0.5 for t <= 0.5": (100, {"late_noise": 0.5, "late_t": 0.5}),
    "exact posterior, log-SNR grid": (100, {**EXACT, "grid": "logsnr"}),
    "exact posterior, 300 steps": (300, EXACT),
    "late_noise 0 for t <= 0.5": (100, {"late_noise": 0.0, "late_t": 0.5}),
    "late_noise 0.25 for t <= 0.5": (100, {"late_noise": 0.25, "late_t": 0.5}),
    "late_noise 0.5 for all t": (100, {"late_noise": 0.5, "late_t": 1.0}),
    "late_noise 0.5 for t <= 0.5, 300 steps": (300, {"late_noise": 0.5, "late_t": 0.5}),
    "late_noise 0.5 for t <= 0.5, 500 steps": (500, {"late_noise": 0.5, "late_t": 0.5}),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="setting names separated by ; (default: all)")
    ap.add_argument("--data", default=str(HERE / "results_bond_sampler_sweep.json"))
    a = ap.parse_args()
    tune_cpu_allocator()
    model = BondDiffusionModel.load(a.export)
    reference = reference_stats("qm9:train", 10_000)
    path = Path(a.data)
    data = json.loads(path.read_text()) if path.is_file() else {"about": __doc__.strip().splitlines()[0], "rows": []}
    names = a.only.split(";") if a.only else list(SETTINGS)
    for name in names:
        steps, options = SETTINGS[name]
        row = quality(model, a.n, steps, a.seed, reference, **options)
        g = row["written_graph"]
        print(f"{name}: valid {100 * g['valid']:.1f} %, one piece {100 * g['valid_connected']:.1f} %, stable {100 * g['molecule_stable']:.1f} %, "
              f"bond W1 {row['bond_length_w1']:.4f}, angle W1 {row['bond_angle_w1']:.2f}, {row['seconds']} s", flush=True)
        data["rows"].append({"setting": name, "steps": steps, "options": options, "export": a.export, "n": a.n, "seed": a.seed, "batch_size": SAMPLE_BATCH, **row,
                             "command": f"python benchmarks/bond_sampler_sweep.py --export {a.export} --n {a.n} --seed {a.seed}"})
        path.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
