"""EDM's evaluation protocol, reproduced exactly: bonds from distances, stability, RDKit validity.

Stability (EDM ``check_stability``): every atom's summed bond order must be in ``ALLOWED_BONDS``;
a molecule is stable when all its atoms are. Validity (EDM ``BasicMolecularMetrics``): the
molecule built from those bonds (atoms without explicit hydrogens, so RDKit may add implicit
ones) must pass ``SanitizeMol``; its SMILES is then that of the *largest fragment*, so
disconnected molecules count as valid.
"""

from __future__ import annotations

import numpy as np

from moldiff.chem.edm_bonds import allowed_valence_table, bond_order, threshold_tables
from moldiff.chem.graph import BondGraph, pair_chunks, pair_distances
from moldiff.data.elements import Vocabulary
from moldiff.data.molecules import MoleculeSet


def edm_bond_graph(mols: MoleculeSet, vocab: Vocabulary) -> BondGraph:
    types = vocab.encode(mols.numbers)
    if (types < 0).any():
        raise ValueError(f"elements outside the {vocab.name} vocabulary; check molecules with MoleculeSet.checked first")
    tables = threshold_tables(vocab)
    pos = mols.positions.astype(np.float32)
    bi, bj, bo, bm = [], [], [], []
    for i, j, m in pair_chunks(mols.offsets):
        order = bond_order(types[i], types[j], pair_distances(pos, i, j), tables)
        keep = order > 0
        bi.append(i[keep]), bj.append(j[keep]), bo.append(order[keep]), bm.append(m[keep])
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    return BondGraph.from_bonds(cat(bi, np.int64), cat(bj, np.int64), cat(bo, np.int8), cat(bm, np.int64), len(mols))


def edm_stability(mols: MoleculeSet, vocab: Vocabulary, graph: BondGraph) -> tuple[np.ndarray, np.ndarray]:
    """(atom_stable (A,), molecule_stable (M,)) by EDM's valency table."""
    allowed = allowed_valence_table(vocab)
    valence = graph.valence(len(mols.numbers)).astype(np.int64)
    types = vocab.encode(mols.numbers)
    atom_ok = np.zeros(len(valence), bool)
    in_range = valence < allowed.shape[1]
    atom_ok[in_range] = allowed[types[in_range], valence[in_range]]
    unstable = np.bincount(mols.molecule_index, ~atom_ok, len(mols))
    return atom_ok, unstable == 0
