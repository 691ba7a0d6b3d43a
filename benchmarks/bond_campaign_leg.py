"""End of a bond-model campaign leg (issue 29): export the run's checkpoint, sample it as users
would, judge the written graph, add it to the learning curve, and ship it when it beats the
shipped coordinates-only model.

python benchmarks/bond_campaign_leg.py [--run outputs/train/bonds_campaign] [--n 1000] [--steps 100] [--seeds 0] [--ship]
python benchmarks/bond_campaign_leg.py --export <run>/exports/step_N.ckpt ...   # judge an earlier export again

* export: ``<run>/checkpoints/last.ckpt`` -> ``<run>/exports/step_<N>.ckpt``, compact (EMA weights,
  matrices in float16; ``moldiff.train.export --compact``): the file evaluated is the file shipped;
* evaluate: ``BondDiffusionModel.sample`` at its defaults (ancestral with the recommended options,
  recorded as ``sampler_options``; ``--steps`` network calls, EMA weights), ``--n`` molecules per
  seed in ``sample.py``'s batches of 500, so they are the molecules ``sample.py`` writes (entries
  before step 20,000 used batches of 250); the written graph (``metrics/graph.py``: valid, one piece,
  stable with charges, unique, agreement with the bonds perceived from the coordinates), EDM's
  protocol from the coordinates alone, and bond-length / angle W1 over the written bonds against
  10,000 QM9 training molecules;
* record: an entry in ``benchmarks/bond_campaign.json`` with cumulative epochs, steps and CPU hours
  over every leg of the training record;
* ``--ship``: copy the export to ``moldiff/checkpoints/qm9_bonds.ckpt`` (``ckpt=qm9-bonds``) when its
  written-graph molecule stability and validity both beat the shipped Gaussian model's EDM-protocol
  figures (58.5 / 79.6 %, its best reading) and the last shipped bond model's.

Run it with the campaign stopped: the sampling time goes into the record.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from moldiff.chem.edm_protocol import edm_bond_graph, edm_stability
from moldiff.chem.edm_rdkit import edm_validity
from moldiff.metrics.distribution import distribution_distances, geometry_stats
from moldiff.metrics.graph import graph_metrics, written_pairs
from moldiff.metrics.reference import reference_stats
from moldiff.model.bond_model import BondDiffusionModel
from moldiff.model.checkpoint import SHIPPED, read_checkpoint
from moldiff.nn.cpu_tuning import tune_cpu_allocator
from moldiff.sampling.samplers import with_recommended
from moldiff.train.export import export_last

HERE = Path(__file__).resolve().parent
SHIPPED_BONDS = SHIPPED.parent / "qm9_bonds.ckpt"
GAUSSIAN_SHIPPED = {"molecule_stable": 0.585, "valid": 0.796}  # sample.py n=1000 defaults, EDM protocol (README)
SAMPLE_BATCH = 500  # configs/sample.yaml's batch_size: the molecules are those of `sample.py ckpt=<export> n=1000 seed=0`
TRAIN_MOLECULES = 99_972  # QM9 train molecules with bond labels (moldiff/chem/bond_labels.py)


def record_totals(ckpt: dict, batch: int = 64) -> dict:
    record = ckpt.get("moldiff_record", [])
    steps = sum(r["last_step"] - r["first_step"] for r in record)
    return {"steps": steps, "epochs": round(steps * batch / TRAIN_MOLECULES, 2), "hours": round(sum(r["seconds"] for r in record) / 3600, 3),
            "device": "+".join(sorted({r["device"].split(":")[0] for r in record})),
            "precision": "+".join(sorted({str(r.get("precision", "32")) for r in record})), "legs": len(record)}


def quality(model: BondDiffusionModel, n: int, steps: int, seed: int, reference, **options) -> dict:
    """Sample ``n`` molecules (``options`` go to ``BondDiffusionModel.sample``) and judge them."""
    t0 = time.perf_counter()
    mols = model.sample(n, steps=steps, seed=seed, batch_size=SAMPLE_BATCH, **options)
    seconds = time.perf_counter() - t0
    graph = graph_metrics(mols, geometry=True)
    vocab = model.vocab
    edm_graph = edm_bond_graph(mols, vocab)
    atom_ok, mol_ok = edm_stability(mols, vocab, edm_graph)
    _, largest = edm_validity(mols, edm_graph)
    dist = distribution_distances(geometry_stats(mols, *written_pairs(mols)), reference)
    return {"seconds": round(seconds, 1), "written_graph": graph,
            "edm": {"atom_stability": float(atom_ok.mean()), "molecule_stability": float(mol_ok.mean()),
                    "validity": sum(s is not None for s in largest) / n},
            "bond_length_w1": dist["bond_length_w1"]["weighted_mean"], "bond_angle_w1": dist["bond_angle_w1"]["weighted_mean"],
            "atom_type_tv": dist["atom_type_tv"], "atom_count_tv": dist["atom_count_tv"]}


def load_campaign(path: Path, about: str) -> dict:
    """The campaign file's entries so far, or a new file's header."""
    return json.loads(path.read_text()) if path.is_file() else {"about": about, "entries": []}


def record_entry(path: Path, data: dict, entry: dict, export: Path, shipped: Path, ship: bool) -> None:
    """Append ``entry`` to the campaign file; with ``ship``, the export becomes ``shipped`` first and
    the only entry marked shipped."""
    if ship:
        shutil.copyfile(export, shipped)
        for e in data["entries"]:
            e["shipped"] = False
        entry["shipped"] = True
        print(f"shipped as {shipped}")
    data["entries"].append(entry)
    path.write_text(json.dumps(data, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="outputs/train/bonds_campaign")
    ap.add_argument("--export", default=None, help="judge this earlier export instead of exporting the run's last checkpoint")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--ship", action="store_true")
    ap.add_argument("--data", default=str(HERE / "bond_campaign.json"))
    a = ap.parse_args()
    tune_cpu_allocator()
    export, small = (Path(a.export), read_checkpoint(a.export)) if a.export else export_last(a.run)
    step = small["global_step"]
    model = BondDiffusionModel.load(export)
    reference = reference_stats("qm9:train", 10_000)
    rows = [quality(model, a.n, a.steps, int(seed), reference) for seed in a.seeds.split(",")]
    # an undefined rate (uniqueness with nothing valid) is NaN here, not 0
    mean = lambda key, sub="written_graph": float(np.mean([np.nan if r[sub][key] is None else r[sub][key] for r in rows]))  # noqa: E731
    entry = {"name": f"bond model (run step {step})", "export": str(export), **record_totals(small), "steps_sampled": a.steps,
             "sampler_options": with_recommended("ancestral"), "batch_size": SAMPLE_BATCH, "n": a.n, "seeds": a.seeds, "rows": rows,
             "command": "python benchmarks/bond_campaign_leg.py " + (f"--export {a.export}" if a.export else f"--run {a.run}") + f" --n {a.n} --steps {a.steps} --seeds {a.seeds}" + (" --ship" if a.ship else "")}
    path = Path(a.data)
    data = load_campaign(path, "The bond model's training campaign (issue 29): one entry per evaluated checkpoint, with cumulative "
                               "epochs, steps and training hours, and the quality of BondDiffusionModel.sample at its defaults "
                               "(written graph, EDM protocol from the coordinates, distances over the written bonds). docs/bonds.md.")
    best = max((e for e in data["entries"] if e.get("shipped")), default=None,
               key=lambda e: np.mean([r["written_graph"]["molecule_stable"] for r in e["rows"]]))
    bar = {k: max(GAUSSIAN_SHIPPED[k], np.mean([r["written_graph"][k] for r in best["rows"]]) if best else 0.0) for k in GAUSSIAN_SHIPPED}
    better = all(mean(k) > bar[k] for k in bar)
    print(f"{entry['name']}: {entry['epochs']} epochs, {entry['hours']} h; written graph: valid {100 * mean('valid'):.1f} %, "
          f"stable {100 * mean('molecule_stable'):.1f} %, one piece {100 * mean('valid_connected'):.1f} %, unique {100 * mean('unique'):.1f} %; "
          f"EDM from coordinates: stable {100 * mean('molecule_stability', 'edm'):.1f} %, valid {100 * mean('validity', 'edm'):.1f} %; "
          f"bond W1 {np.mean([r['bond_length_w1'] for r in rows]):.4f} A, angle W1 {np.mean([r['bond_angle_w1'] for r in rows]):.2f} deg")
    record_entry(path, data, entry, export, SHIPPED_BONDS, a.ship and better)


if __name__ == "__main__":
    main()
