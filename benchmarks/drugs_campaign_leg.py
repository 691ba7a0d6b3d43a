"""End of a drug-like bond-model leg (issue 31): export the run's checkpoint, sample it as users
would, judge it with the GEOM-Drugs Revisited graph metrics, add it to the learning curve, and ship
it as ``ckpt=drugs-bonds`` when it beats the geom_1k models.

python benchmarks/drugs_campaign_leg.py [--run outputs/train/moses_bonds] [--n 200] [--steps 100] [--seed 0] [--ship]

* export: ``<run>/checkpoints/last.ckpt`` -> ``<run>/exports/step_<N>.ckpt``, compact (EMA weights,
  matrices in float16), as for the QM9 bond model;
* evaluate: ``BondDiffusionModel.sample`` at its defaults, ``--n`` molecules (atom counts from
  the training histogram) in batches of ``SAMPLE_BATCH``; the GEOM-Drugs Revisited
  figures of the written graphs (``metrics/revisited.py``: stability with the paper's valency
  table, validity, valid and connected); the written-graph metrics (uniqueness, agreement with the
  bonds perceived from the coordinates); bond-length and angle W1 over the written bonds against
  2,000 MOSES test conformers; the molecules go to ``<run>/exports/step_<N>_samples.sdf`` so the
  xTB part (``scripts/evaluate.py input=... protocols=[revisited] revisited_xtb=N``) can follow;
* record: an entry in ``benchmarks/drugs_campaign.json`` with cumulative steps, epochs (steps over
  the epoch's batch count) and training hours;
* ``--ship``: copy the export to ``moldiff/checkpoints/drugs_bonds.ckpt`` when its V&C beats the
  best geom_1k model's validity (10.8 %, corrected protocol; those models write no bonds, so their
  bonds are perceived) and every earlier shipped drug-like entry's V&C.

Run it with training stopped: the sampling time goes into the record.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bond_campaign_leg import load_campaign, record_entry, record_totals

from moldiff.data.loader import EpochBatchSampler
from moldiff.data.molecules import MoleculeSet
from moldiff.io.convert import own_bonds_mol
from moldiff.io.writers import write_sdf
from moldiff.metrics.distribution import distribution_distances, geometry_stats
from moldiff.metrics.graph import graph_metrics, written_pairs
from moldiff.metrics.reference import reference_stats
from moldiff.metrics.revisited import revisited
from moldiff.model.bond_model import BondDiffusionModel
from moldiff.model.checkpoint import SHIPPED, read_checkpoint
from moldiff.nn.cpu_tuning import tune_cpu_allocator
from moldiff.sampling.samplers import with_recommended
from moldiff.train.export import export_last

HERE = Path(__file__).resolve().parent
SHIPPED_DRUGS = SHIPPED.parent / "drugs_bonds.ckpt"
GEOM_1K_BEST = 0.108  # best geom_1k model's validity, corrected protocol (results_geom_1k_models.json)
SAMPLE_BATCH = 100  # molecules per sampling batch (~160k scored pairs at 40 atoms)
TRAIN = "datasets/moses/cache/moses_100k_k1_train.npz"
TEST = "datasets/moses/cache/moses_100k_k1_test.npz"


def batches_per_epoch(train: str, max_edges: int) -> int:
    """The first epoch's batch count under the run's edge bound (later epochs differ by a few)."""
    sizes = MoleculeSet.load(train).n_atoms
    return len(EpochBatchSampler(len(sizes), 1, sizes=sizes, max_edges=max_edges))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="outputs/train/moses_bonds")
    ap.add_argument("--export", default=None, help="judge this earlier export instead of exporting the run's last checkpoint")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-edges", type=int, default=40_000, help="the run's batch_edges (experiment=moses_bonds_cpu's), for its epoch count")
    ap.add_argument("--ship", action="store_true")
    ap.add_argument("--data", default=str(HERE / "drugs_campaign.json"))
    a = ap.parse_args()
    tune_cpu_allocator()
    export, small = (Path(a.export), read_checkpoint(a.export)) if a.export else export_last(a.run)
    step = small["global_step"]
    model = BondDiffusionModel.load(export)

    t0 = time.perf_counter()
    mols = model.sample(a.n, steps=a.steps, seed=a.seed, batch_size=SAMPLE_BATCH)
    seconds = time.perf_counter() - t0
    sdf = export.with_name(export.stem + "_samples.sdf")
    write_sdf(sdf, [own_bonds_mol(mols, i) for i in range(len(mols))])
    rev = revisited(mols)
    graph = graph_metrics(mols, geometry=True)
    dist = distribution_distances(geometry_stats(mols, *written_pairs(mols)), reference_stats(f"geom:{TEST}", 2000))
    totals = record_totals(small)
    per_epoch = batches_per_epoch(TRAIN, a.batch_edges)
    totals["epochs"] = round(totals["steps"] / per_epoch, 2)
    entry = {"name": f"drug-like bond model (run step {step})", "export": str(export), **totals, "batches_per_epoch": per_epoch,
             "steps_sampled": a.steps, "sampler_options": with_recommended("ancestral"), "n": a.n, "seed": a.seed,
             "seconds": round(seconds, 1), "samples": str(sdf),
             "revisited": rev, "written_graph": graph,
             "bond_length_w1": dist["bond_length_w1"]["weighted_mean"], "bond_angle_w1": dist["bond_angle_w1"]["weighted_mean"],
             "atom_type_tv": dist["atom_type_tv"], "atom_count_tv": dist["atom_count_tv"],
             "command": "python benchmarks/drugs_campaign_leg.py " + (f"--export {a.export}" if a.export else f"--run {a.run}")
                        + f" --n {a.n} --steps {a.steps} --seed {a.seed}" + (" --ship" if a.ship else "")}
    path = Path(a.data)
    data = load_campaign(path, "The drug-like bond model's training campaign on MOSES (issue 31): one entry per evaluated checkpoint, "
                               "with cumulative steps, epochs and training hours, and the GEOM-Drugs Revisited graph figures of "
                               "BondDiffusionModel.sample at its defaults. docs/drugs.md.")
    bar = max([GEOM_1K_BEST] + [e["revisited"]["valid_and_connected"] for e in data["entries"] if e.get("shipped")])
    vc = rev["valid_and_connected"]
    print(f"{entry['name']}: {entry['epochs']} epochs, {entry['hours']} h; revisited: atoms stable {100 * rev['atom_stability']:.1f} %, "
          f"molecules stable {100 * rev['molecule_stability']:.1f} %, valid {100 * rev['validity']:.1f} %, V&C {100 * vc:.1f} %; "
          f"unique {100 * (graph['unique'] or 0):.1f} %; bond W1 {entry['bond_length_w1']:.4f} A, angle W1 {entry['bond_angle_w1']:.2f} deg; "
          f"{seconds:.0f} s to sample")
    record_entry(path, data, entry, export, SHIPPED_DRUGS, a.ship and vc > bar)


if __name__ == "__main__":
    main()
