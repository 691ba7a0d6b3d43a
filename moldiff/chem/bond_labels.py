"""Bond orders and formal charges as training labels for the bond model, where a dataset's files
carry none (QM9's XYZ files hold only elements and coordinates).

The labels are the corrected protocol's perception of the real coordinates (``perceive``, RDKit's
``rdDetermineBonds`` with the fixes of ``determine_bonds.py``) at total charge 0 (every QM9
molecule is neutral), kekulised: orders 1, 2, 3, never aromatic, so that the model writes Kekulé
structures RDKit sanitises as they are. Perception, rather than QM9's SMILES mapped onto the atoms,
because it reads the same geometry the model learns (QM9's SMILES describe the molecule GDB
enumerated, before the DFT relaxation that produced the coordinates) and needs no atom mapping.
A molecule for which perception gives no valid structure with every atom stable is left out of
the labelled set and counted by reason (docs/bonds.md has the counts).

``labelled_split(spec)`` caches the result next to the dataset's own cache, keyed by the spec.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
from rdkit import Chem

from moldiff.chem.determine_bonds import perceive
from moldiff.data.molecules import MoleculeSet
from moldiff.data.paths import cache_dir
from moldiff.data.sources import load_source

LABELS_VERSION = 1


def kekule_graph(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
    """(b, 3) rows (i, j, order), i < j, of the Kekulé structure and (n,) formal charges."""
    mol = Chem.Mol(mol)
    Chem.Kekulize(mol, clearAromaticFlags=True)
    rows = []
    for bond in mol.GetBonds():
        i, j = sorted((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
        rows.append((i, j, int(round(bond.GetBondTypeAsDouble()))))
    charges = np.array([a.GetFormalCharge() for a in mol.GetAtoms()], np.int8)
    return np.array(sorted(rows), np.int32).reshape(-1, 3), charges


def label_bonds(mols: MoleculeSet, charge: int = 0, progress: bool = False) -> tuple[MoleculeSet, np.ndarray, Counter]:
    """The molecules that perception labels (with bonds and charges), their indices in ``mols``,
    and the count of the others by reason."""
    keep, bonds, counts, charges, failures = [], [], [], [], Counter()
    start = time.time()
    for k, (numbers, positions) in enumerate(mols):
        p = perceive(numbers, positions, charge)
        if p.mol is None or not p.ok:
            failures[p.failure or "unstable atoms"] += 1
            continue
        if [a.GetAtomicNum() for a in p.mol.GetAtoms()] != numbers.tolist():  # perception must keep atom order
            failures["atom order changed"] += 1
            continue
        b, q = kekule_graph(p.mol)
        keep.append(k)
        bonds.append(b)
        counts.append(len(b))
        charges.append(q)
        if progress and (k + 1) % 20000 == 0:
            print(f"  bond labels: {k + 1} of {len(mols)} molecules ({time.time() - start:.0f} s)", flush=True)
    keep = np.asarray(keep, np.int64)
    out = mols.subset(keep)
    out.charges = np.concatenate(charges) if charges else np.zeros(0, np.int8)
    out.bonds = np.concatenate(bonds) if bonds else np.zeros((0, 3), np.int32)
    out.bond_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    out.__post_init__()  # check the assembled fields
    return out, keep, failures


def labelled_split(spec: str, progress: bool = True) -> tuple[MoleculeSet, dict]:
    """Molecules of a source with bonds and charges: its own where it stores them (drug-like
    caches), else perceived once and cached (``<data>/<name>/cache/bonds_<split>_v1.npz``)."""
    mols, _, _ = load_source(spec)
    if mols.has_bonds and mols.charges is not None:
        return mols, {"source": "file", "n": len(mols), "left_out": {}}
    head, _, rest = spec.partition(":")
    path = cache_dir(head or "user") / f"bonds_{rest.replace('/', '_') or 'all'}_v{LABELS_VERSION}.npz"
    if path.is_file():
        labelled = MoleculeSet.load(path)
        return labelled, {"source": "perceived (cached)", "n": len(labelled), "left_out": len(mols) - len(labelled)}
    if progress:
        print(f"{spec}: perceiving bond orders and formal charges of {len(mols)} molecules once (~0.5 ms each), "
              f"cached in {path}", flush=True)
    labelled, _, failures = label_bonds(mols, progress=progress)
    labelled.save(path)
    return labelled, {"source": "perceived", "n": len(labelled), "left_out": dict(failures)}
