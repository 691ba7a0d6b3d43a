"""Fragment elaboration and linking on QM9 (issue 30): cut 3 peripheral heavy atoms (and their
hydrogens) from real test molecules, or a linker between two pieces (``--task link``), keep the
rest fixed, regenerate at the original atom count.

python benchmarks/constrained_design.py [--ckpt shipped] [--task elaborate|link] [--linker 1] [--fragments 500] [--completions 10] [--steps 300]
       [--reconstruction W] [--resample 1] [--baseline/--no-baseline] [--out benchmarks/results_constrained_design.json]

* fragments: QM9 test molecules in a fixed random order (seed 0) with at least 6 heavy atoms whose
  corrected-protocol bonds are known (``chem.bond_labels``); three times, a heavy atom with one
  heavy neighbour (a leaf of the heavy-atom graph, the last one in atom order) is removed with its
  hydrogens, so the fragment stays one connected piece; ``--task link``: instead a chain of
  ``--linker`` heavy atoms (the last in atom order) whose removal, with their hydrogens, leaves two
  pieces of at least two heavy atoms each, both kept in one record (completions in one piece
  linked them);
* completions: ``--completions`` per fragment with ``DiffusionModel.sample`` (or the bond model's)
  at the model's user defaults, ``fragment=`` and ``n_atoms=`` the original count (``--reconstruction``
  the guidance weight, 0 for plain replacement, unset for the model's default; ``--resample``
  RePaint's resampling); a bond model trained with fragments (``model.fragment_condition``) is
  handed the fragment clean instead of replacement ("method" in the results);
* baseline: the same number of unconstrained molecules of the same sizes, same model and sampler;
* figures: fragment preservation (largest position deviation of a fixed atom in the file frame,
  elements kept, and with the bond model formal charges and bonds among fixed atoms), EDM and corrected validity and stability of completions and baseline, the bond
  model's written graph, recovery (completions whose canonical SMILES under the corrected
  protocol equals the original's) and uniqueness among each fragment's valid completions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from moldiff.chem.bond_labels import label_bonds
from moldiff.chem.determine_bonds import perceive
from moldiff.data.molecules import MoleculeSet
from moldiff.data.qm9 import load_qm9
from moldiff.metrics.evaluate import evaluate
from moldiff.model.bond_model import BondDiffusionModel, is_bond_checkpoint
from moldiff.model.checkpoint import read_checkpoint
from moldiff.model.diffusion import DiffusionModel
from moldiff.nn.cpu_tuning import tune_cpu_allocator
from moldiff.sampling.inpaint import RECONSTRUCTION


def peripheral_cut(mols: MoleculeSet, i: int, cut: int = 3) -> np.ndarray | None:
    """Atom mask of molecule ``i`` without ``cut`` peripheral heavy atoms and their hydrogens, or None."""
    numbers, _ = mols[i]
    keep = np.ones(len(numbers), bool)
    bonds = mols.bonds_of(i)
    heavy = numbers > 1
    if heavy.sum() < 6:
        return None
    for _ in range(cut):
        degree = np.zeros(len(numbers), int)
        for a, b, _ in bonds:
            if keep[a] and keep[b] and heavy[a] and heavy[b]:
                degree[a] += 1
                degree[b] += 1
        leaves = np.flatnonzero(keep & heavy & (degree == 1))
        if not len(leaves):
            return None
        leaf = leaves[-1]
        keep[leaf] = False
        for a, b, _ in bonds:  # its hydrogens go with it
            for x, y in ((a, b), (b, a)):
                if x == leaf and numbers[y] == 1:
                    keep[y] = False
    return keep


def linker_cut(mols: MoleculeSet, i: int, length: int = 1) -> np.ndarray | None:
    """Atom mask of molecule ``i`` without a chain of ``length`` heavy atoms (and their hydrogens)
    that joins two pieces of at least two heavy atoms each, or None."""
    numbers, _ = mols[i]
    heavy = np.flatnonzero(numbers > 1)
    adj = {int(a): set() for a in heavy}
    for a, b, _ in mols.bonds_of(i).tolist():
        if a in adj and b in adj:
            adj[a].add(b)
            adj[b].add(a)
    chains = [(a,) for a in adj] if length == 1 else [(a, b) for a in adj for b in adj[a] if a < b] if length == 2 else []
    if not chains:
        raise ValueError(f"--linker: 1 or 2 heavy atoms, got {length}")
    for chain in reversed(chains):
        rest, pieces = set(adj) - set(chain), []
        while rest:
            stack, piece = [rest.pop()], set()
            while stack:
                a = stack.pop()
                piece.add(a)
                stack += [b for b in adj[a] if b in rest]
                rest -= adj[a]
            pieces.append(piece)
        if len(pieces) == 2 and min(len(q) for q in pieces) >= 2:
            keep = np.ones(len(numbers), bool)
            keep[list(chain)] = False
            for a, b, _ in mols.bonds_of(i).tolist():  # their hydrogens go with them
                for x, y in ((a, b), (b, a)):
                    if x in chain and numbers[y] == 1:
                        keep[y] = False
            return keep
    return None


def fragments(n: int, task: str = "elaborate", linker: int = 1) -> list[tuple[int, MoleculeSet, MoleculeSet]]:
    test = load_qm9("test")
    order = np.random.default_rng(0).permutation(len(test))
    out = []
    for start in range(0, len(order), 2000):
        labelled, kept, _ = label_bonds(test.subset(order[start : start + 2000]))
        for j in range(len(labelled)):
            mask = peripheral_cut(labelled, j) if task == "elaborate" else linker_cut(labelled, j, linker)
            if mask is not None:
                out.append((int(order[start + kept[j]]), labelled.subset([j]), labelled.subset([j]).select_atoms(mask)))
            if len(out) == n:
                return out
    return out


def _fixed_graph(mols: MoleculeSet, i: int, k: int) -> tuple:
    """Formal charges of the first k atoms of molecule i and the bonds among them."""
    bonds = sorted((min(a, b), max(a, b), int(o)) for a, b, o in mols.bonds_of(i).tolist() if max(a, b) < k)
    return tuple(mols.charges_of(i)[:k].tolist()), tuple(bonds)


def smiles_of(numbers, positions) -> str | None:
    return perceive(numbers, positions, 0).smiles


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="shipped")
    ap.add_argument("--task", choices=("elaborate", "link"), default="elaborate")
    ap.add_argument("--linker", type=int, default=1, help="--task link: heavy atoms in the cut linker (1 or 2)")
    ap.add_argument("--fragments", type=int, default=500)
    ap.add_argument("--completions", type=int, default=10)
    ap.add_argument("--steps", type=int, default=None, help="default: the model's own (300 Gaussian, 100 bond model)")
    ap.add_argument("--reconstruction", type=float, default=None, help=f"default: the model's ({RECONSTRUCTION} with replacement)")
    ap.add_argument("--resample", type=int, default=1)
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                    help="also sample unconstrained molecules of the same sizes (--no-baseline for a sweep)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    tune_cpu_allocator()
    bond = is_bond_checkpoint(read_checkpoint(a.ckpt))
    model = BondDiffusionModel.load(a.ckpt) if bond else DiffusionModel.load(a.ckpt)
    steps = a.steps or (100 if bond else 300)
    frags = fragments(a.fragments, a.task, a.linker)
    t0 = time.perf_counter()
    completions, deviations, kept_elements, kept_graph, recovered, unique = [], [], [], [], [], []
    for k, (_, original, frag) in enumerate(frags):
        n_total = int(original.n_atoms[0])
        mols = model.sample(a.completions, steps=steps, seed=k, fragment=frag, n_atoms=n_total,
                            reconstruction=a.reconstruction, resample=a.resample, **({} if bond else {"progress": False}))
        fixed_pos = mols.positions[mols.fixed]
        deviations.append(float(np.abs(fixed_pos - np.tile(frag.positions, (a.completions, 1))).max()))
        kept_elements.append(bool((mols.numbers[mols.fixed] == np.tile(frag.numbers, a.completions)).all()))
        if bond:
            kept_graph.append(all(_fixed_graph(mols, i, len(frag.numbers)) == _fixed_graph(frag, 0, len(frag.numbers))
                                  for i in range(len(mols))))
        target = smiles_of(*original[0])
        smiles = [smiles_of(*mols[i]) for i in range(len(mols))]
        recovered.append(sum(s is not None and s == target for s in smiles))
        valid = [s for s in smiles if s is not None]
        unique.append(len(set(valid)) / len(valid) if valid else float("nan"))
        completions.append(mols)
    seconds = time.perf_counter() - t0
    done = MoleculeSet.concatenate(completions)
    sizes = np.repeat([int(o.n_atoms[0]) for _, o, _ in frags], a.completions)
    baseline = model.sample(len(sizes), steps=steps, seed=10_000, sizes=sizes) if a.baseline else None
    vocab = model.vocab if bond else model.layout.vocab
    conditioned = bond and model.net.fragment_condition
    result = {
        "command": "python benchmarks/constrained_design.py " + " ".join(
            (f"--{k}" if v is True else f"--no-{k}" if v is False else f"--{k} {v}") for k, v in vars(a).items() if v is not None and k != "out"),
        "task": a.task, **({"linker_heavy_atoms": a.linker} if a.task == "link" else {}),
        "method": "fragment-conditioned model (fragment handed clean)" if conditioned else "replacement (RePaint)",
        "reconstruction": 0.0 if conditioned else (RECONSTRUCTION if a.reconstruction is None else a.reconstruction), "resample": a.resample,
        "model": a.ckpt, "bond_model": bond, "steps": steps, "fragments": len(frags), "completions_per_fragment": a.completions,
        "seconds_sampling_completions": round(seconds, 1),
        "preservation": {"max_position_deviation_A": max(deviations), "elements_kept": float(np.mean(kept_elements)),
                         **({"charges_and_bonds_kept": float(np.mean(kept_graph))} if bond else {})},
        "recovery": float(np.sum(recovered) / len(done)), "uniqueness_within_fragment": float(np.nanmean(unique)),
        "completions": {k: v for k, v in evaluate(done, vocab).items() if k in ("edm", "corrected", "written_graph")},
    }
    if baseline is not None:
        result["baseline_same_sizes"] = {k: v for k, v in evaluate(baseline, vocab).items() if k in ("edm", "corrected", "written_graph")}
    print(json.dumps({k: v for k, v in result.items() if k not in ("completions", "baseline_same_sizes")}, indent=1))
    for name in ("completions", "baseline_same_sizes"):
        if name not in result:
            continue
        e = result[name]
        print(f"{name}: EDM valid {100 * e['edm']['validity']:.1f} % stable {100 * e['edm']['molecule_stability']:.1f} % | "
              f"corrected valid {100 * e['corrected']['validity']:.1f} %")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
