"""End of a campaign leg: export the run's checkpoint, evaluate it as users would sample it, add it
to the learning curve, and ship it if it beats the shipped model.

python benchmarks/campaign_leg.py [--run outputs/train/campaign] [--seeds 0,1] [--n 1000] [--ship] [--branch]

* export: ``<run>/checkpoints/last.ckpt`` -> ``<run>/exports/step_<N>.ckpt``, compact (EMA weights
  in float16, configs, training record; ``moldiff.train.export --compact``): the file evaluated is
  the file shipped, and it takes 1.2 MB of the repository's checkpoint budget instead of 4.8;
* evaluate: ancestral sampling, 300 steps, EMA weights, float32, EDM's exact posterior (``generate``'s
  default; ``sample.py`` now halves the noise for t <= 0.5, which the curve leaves out to stay comparable), ``--n``
  molecules per seed, EDM and corrected protocols and the distribution distances against 10,000
  QM9 training molecules (``sampler_quality.quality``);
* record: an entry in ``benchmarks/campaign.json`` with cumulative epochs, steps and training
  hours summed over every leg of the training record (the shipped model's legs included);
* ``--ship``: copy the export to ``moldiff/checkpoints/qm9_egnn.ckpt`` only if its mean EDM
  molecule stability over the seeds beats the entry marked as shipped;
* ``--branch``: the run is a learning-rate cooldown branched off the campaign's trunk (how shipped
  models are made since the recipe study; docs/training.md, docs/history.md); its entry is marked as a branch.

Run it with the campaign stopped: the sampling time goes into the record.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from moldiff.metrics.reference import reference_stats
from moldiff.nn.cpu_tuning import tune_cpu_allocator
from moldiff.model.checkpoint import SHIPPED
from moldiff.model.diffusion import DiffusionModel
from moldiff.train.export import export_last
from sampler_quality import quality

HERE = Path(__file__).resolve().parent
TRAIN_MOLECULES = 100_000  # QM9 train split (EDM's)


def record_totals(ckpt: dict) -> dict:
    record = ckpt.get("moldiff_record", [])
    devices = sorted({r["device"].split(":")[0] for r in record})
    precisions = sorted({str(r.get("precision", "32")) for r in record})
    batch = 64  # the recipe's batch size (configs/train.yaml)
    steps = sum(r["last_step"] - r["first_step"] for r in record)  # a warm start restarts the step count: add up the legs
    return {"steps": steps, "epochs": round(steps * batch / TRAIN_MOLECULES, 2),
            "hours": round(sum(r["seconds"] for r in record) / 3600, 2), "device": "+".join(devices),
            "precision": "+".join(precisions), "legs": len(record)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="outputs/train/campaign")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--ship", action="store_true")
    ap.add_argument("--data", default=str(HERE / "campaign.json"))
    ap.add_argument("--branch", action="store_true", help="the run is a learning-rate cooldown branched off the campaign's trunk")
    a = ap.parse_args()
    tune_cpu_allocator()
    export, small = export_last(a.run)
    step = small["global_step"]
    module = DiffusionModel.load(export, torch.device("cpu"))
    reference = reference_stats("qm9:train", 10_000)
    rows = [quality(module, "ancestral", 300, a.n, int(seed), reference=reference) for seed in a.seeds.split(",")]
    leg = small["moldiff_record"][-1]
    name = f"campaign + {leg['last_step'] - leg['first_step']}-step lr cooldown (run step {step})" if a.branch else f"campaign (run step {step})"
    entry = {"name": name, "export": str(export), **record_totals(small), **({"branch": True} if a.branch else {}),
             "edm": {k: [r["edm"][k] for r in rows] for k in rows[0]["edm"]},
             "corrected": {k: [r["corrected"][k] for r in rows] for k in rows[0]["corrected"]},
             "distances": [r["distances"] for r in rows], "sampling_seconds": [r["seconds"] for r in rows],
             "command": f"python benchmarks/campaign_leg.py --run {a.run} --seeds {a.seeds} --n {a.n}" + (" --branch" if a.branch else "") + (" --ship" if a.ship else "")}
    data = json.loads(Path(a.data).read_text())
    shipped = next(e for e in data["entries"] if e.get("shipped"))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    better = mean(entry["edm"]["molecule_stability"]) > mean(shipped["edm"]["molecule_stability"])
    print(f"{entry['name']}: {entry['epochs']} epochs, {entry['hours']} h; EDM mol. stability "
          f"{100 * mean(entry['edm']['molecule_stability']):.1f} % against the shipped {100 * mean(shipped['edm']['molecule_stability']):.1f} %")
    if a.ship and better:
        shutil.copyfile(export, SHIPPED)
        shipped["shipped"] = False
        entry["shipped"] = True
        print(f"shipped as {SHIPPED}")
    data["entries"].append(entry)
    Path(a.data).write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
