"""EDM's RDKit validity: the molecule from EDM's bonds must sanitise; SMILES of its largest fragment."""

from __future__ import annotations

import numpy as np

from moldiff.chem.graph import BondGraph
from moldiff.chem.rdkit_mol import largest_fragment, make_mol, sanitized_smiles
from moldiff.data.molecules import MoleculeSet


def edm_validity(mols: MoleculeSet, graph: BondGraph) -> list[str | None]:
    """Per molecule: the largest fragment's canonical SMILES if valid under EDM's rule, else None."""
    out: list[str | None] = []
    for m in range(len(mols)):
        a = mols.offsets[m]
        i, j, o = graph.of(m)
        mol = make_mol(mols.numbers[a : mols.offsets[m + 1]], bonds=(i - a, j - a, o))
        smiles = sanitized_smiles(mol)
        if smiles is not None:
            smiles = sanitized_smiles(largest_fragment(mol))
        out.append(smiles)
    return out


def edm_fragment_counts(mols: MoleculeSet, graph: BondGraph) -> np.ndarray:
    """Connected components per molecule of EDM's bond graph (1 = connected)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(mols.numbers)
    adj = coo_matrix((np.ones(len(graph.i)), (graph.i, graph.j)), shape=(n, n))
    _, labels = connected_components(adj, directed=False)
    # Components never span molecules, so count distinct labels per molecule.
    mol = mols.molecule_index
    pairs = np.unique(np.stack([mol, labels]), axis=1)
    return np.bincount(pairs[0], minlength=len(mols))
