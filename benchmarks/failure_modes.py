"""What sampled molecules get wrong: EDM-protocol failures broken down, beside real QM9 as control.

python benchmarks/failure_modes.py [--ckpt shipped] [--n 1000] [--seed 0] [--steps 300] [--options "late_noise=0.5;late_t=0.1"]
                                   [--mols outputs/failure_modes/seed0.npz] [--out benchmarks/results_failure_modes.json]

Samples ``--n`` molecules as ``campaign_leg.py`` does (ancestral, EMA, float32, EDM's exact
posterior; ``--options``: the ancestral sampler's options as in ``sampler_quality.py``, e.g.
``sample.py``'s default ``"late_noise=0.5;late_t=0.5"``) and saves them to
``--mols`` (reused if the file exists), then reports for them and for ``--n`` real QM9 test
molecules:

* unstable atoms by element and summed bond order (EDM's bonds from distances), e.g. ``C:3``;
* for an under-bonded atom, how far its nearest unbonded neighbour that is itself under-bonded lies
  beyond the single-bond threshold (a "near miss" is a bond the geometry almost makes);
* for an over-bonded atom, how far inside its threshold its closest-to-threshold bond lies (the
  bond or order that would have to go);
* unstable molecules by how many unstable atoms they have; RDKit's reasons for invalid ones;
  fragments; molecule stability by size.

Why (docs/history.md, "What the curve says"): validity stayed at ~70 % from 42 to
56 epochs while stability rose; this says whether the errors are small geometric misses, which
more denoising precision fixes, or wrong atom types and counts, which it does not.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem

from moldiff.chem.edm_bonds import allowed_valence_table, threshold_tables
from moldiff.chem.edm_protocol import edm_bond_graph, edm_stability
from moldiff.chem.edm_rdkit import edm_fragment_counts
from moldiff.chem.graph import all_pairs, pair_distances
from moldiff.chem.rdkit_mol import make_mol, quiet_rdkit
from moldiff.data.elements import QM9_VOCAB
from moldiff.data.molecules import MoleculeSet
from moldiff.data.report import InputReport
from moldiff.data.sources import load_source
from sampler_quality import parse_options

NEAR_BINS = (5, 15, 30)  # pm beyond (or inside) a threshold


def _bin(excess_pm: float) -> str:
    for b in NEAR_BINS:
        if excess_pm < b:
            return f"< {b} pm"
    return f">= {NEAR_BINS[-1]} pm"


def sanitize_reason(mol) -> str | None:
    try:
        Chem.SanitizeMol(mol)
    except ValueError as err:
        text = str(err)
        if "Explicit valence" in text or "valence" in text.lower():
            # "Explicit valence for atom # 3 N, 4, is greater than permitted"
            words = text.replace(",", " ").split()
            sym = next((w for w in words if w in ("C", "N", "O", "F", "H")), "?")
            return f"valence too high ({sym})"
        if "kekulize" in text.lower():
            return "cannot kekulize"
        return text.split(":")[0][:40]
    return None


def analyse(mols: MoleculeSet, vocab=QM9_VOCAB) -> dict:
    graph = edm_bond_graph(mols, vocab)
    atom_ok, mol_ok = edm_stability(mols, vocab, graph)
    valence = graph.valence(len(mols.numbers)).astype(np.int64)
    types = vocab.encode(mols.numbers)
    allowed = allowed_valence_table(vocab)
    target = np.array([np.flatnonzero(allowed[t])[0] for t in types])  # QM9's elements have one allowed valence
    tables = threshold_tables(vocab)
    sym = np.array(vocab.symbols)[types]

    i, j, _ = all_pairs(mols.offsets)
    d_pm = pair_distances(mols.positions.astype(np.float32), i, j) * 100
    lo, hi = np.minimum(types[i], types[j]), np.maximum(types[i], types[j])
    t1 = tables[0, lo, hi]
    bonded = d_pm < t1
    under = valence < target
    over = valence > target

    near = Counter()  # under-bonded atoms: nearest unbonded, under-bonded partner beyond its threshold
    cand = ~bonded & under[i] & under[j]
    best = np.full(len(types), np.inf)
    np.minimum.at(best, i[cand], (d_pm - t1)[cand])
    np.minimum.at(best, j[cand], (d_pm - t1)[cand])
    for a in np.flatnonzero(under):
        near[_bin(best[a]) if np.isfinite(best[a]) else "no under-bonded partner"] += 1

    inside = Counter()  # over-bonded atoms: the bond (or order) closest to its threshold
    orders = [tables[k, lo, hi] for k in range(3)]
    margin = np.full(len(d_pm), np.inf)
    for t in orders:  # distance inside the tightest threshold the pair passes
        passed = d_pm < t
        margin[passed] = np.minimum(margin[passed], (t - d_pm)[passed])
    best_in = np.full(len(types), np.inf)
    np.minimum.at(best_in, i[bonded], margin[bonded])
    np.minimum.at(best_in, j[bonded], margin[bonded])
    for a in np.flatnonzero(over):
        inside[_bin(best_in[a])] += 1

    bad_atoms = Counter(f"{s}:{v}" for s, v in zip(sym[~atom_ok], valence[~atom_ok]))
    per_mol = np.bincount(mols.molecule_index, ~atom_ok, len(mols)).astype(int)
    reasons = Counter()
    with quiet_rdkit():
        for m in range(len(mols)):
            a = mols.offsets[m]
            bi, bj, bo = graph.of(m)
            r = sanitize_reason(make_mol(mols.numbers[a : mols.offsets[m + 1]], bonds=(bi - a, bj - a, bo)))
            reasons[r or "valid"] += 1
    frags = edm_fragment_counts(mols, graph)
    sizes = mols.n_atoms
    by_size = {}
    for lo_n, hi_n in ((0, 12), (12, 16), (16, 20), (20, 24), (24, 30)):
        sel = (sizes >= lo_n) & (sizes < hi_n)
        if sel.any():
            by_size[f"{lo_n}-{hi_n - 1}"] = {"n": int(sel.sum()), "molecule_stability": round(float(mol_ok[sel].mean()), 3)}
    n_atoms = len(types)
    return {
        "molecules": len(mols), "atoms": n_atoms,
        "atom_stability": round(float(atom_ok.mean()), 4), "molecule_stability": round(float(mol_ok.mean()), 4),
        "validity": round(reasons["valid"] / len(mols), 4),
        "unstable_atoms": {k: v for k, v in bad_atoms.most_common()},
        "under_bonded": int(under.sum()), "over_bonded": int(over.sum()),
        "under_bonded_nearest_partner_beyond_threshold": dict(sorted(near.items())),
        "over_bonded_closest_bond_inside_threshold": dict(sorted(inside.items())),
        "unstable_molecules_by_unstable_atoms": {str(k): int(v) for k, v in sorted(Counter(np.minimum(per_mol[per_mol > 0], 4)).items())},
        "invalid_reasons": {k: v for k, v in reasons.most_common() if k != "valid"},
        "fragmented": int((frags > 1).sum()),
        "molecule_stability_by_size": by_size,
    }


def sampled(ckpt: str, n: int, seed: int, steps: int, path: Path, options: dict) -> MoleculeSet:
    if path.is_file():
        return MoleculeSet.load(path)
    from moldiff.model.diffusion import DiffusionModel
    from moldiff.nn.cpu_tuning import tune_cpu_allocator
    from moldiff.sampling.generate import generate

    tune_cpu_allocator()
    module = DiffusionModel.load(ckpt, torch.device("cpu"))
    mols = generate(module, n, sampler="ancestral", steps=steps, batch_size=500, seed=seed, progress=False, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    mols.save(path)
    return mols


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default="shipped")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--mols", default="outputs/failure_modes/seed0.npz")
    p.add_argument("--options", default="")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    options = parse_options(a.options)
    gen = sampled(a.ckpt, a.n, a.seed, a.steps, Path(a.mols), options)
    real, _, _ = load_source("qm9:test", InputReport())
    real = real.subset(np.sort(np.random.default_rng(0).permutation(len(real))[: a.n]))
    result = {"command": f"python benchmarks/failure_modes.py --ckpt {a.ckpt} --n {a.n} --seed {a.seed} --steps {a.steps}"
              + (f" --options '{a.options}'" if a.options else ""),
              "sampled": analyse(gen), "qm9_test": analyse(real)}
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
