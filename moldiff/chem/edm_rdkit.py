"""EDM's RDKit validity: the molecule from EDM's bonds must sanitise; SMILES of its largest fragment."""

from __future__ import annotations

import numpy as np
from rdkit import Chem

from moldiff.chem.graph import BondGraph
from moldiff.chem.rdkit_mol import largest_fragment, make_mol, quiet_rdkit, sanitized_smiles
from moldiff.data.molecules import MoleculeSet


def edm_validity(mols: MoleculeSet, graph: BondGraph, single_bonds_only: bool = False) -> tuple[list, list]:
    """Per molecule: (whole-molecule SMILES, largest fragment's SMILES), None where invalid.

    The largest fragment's SMILES is EDM's validity and uniqueness key; the whole molecule's is
    what EDM stores for its training set (novelty reference). ``single_bonds_only`` is EDM's
    GEOM-Drugs setting (``limit_bonds_to_one=True`` when building RDKit molecules).
    """
    with quiet_rdkit():
        pairs = [_edm_smiles(mols, graph, m, single_bonds_only) for m in range(len(mols))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _edm_smiles(mols: MoleculeSet, graph: BondGraph, m: int, single_bonds_only: bool) -> tuple[str | None, str | None]:
    a = mols.offsets[m]
    i, j, o = graph.of(m)
    if single_bonds_only:
        o = np.ones_like(o)
    mol = make_mol(mols.numbers[a : mols.offsets[m + 1]], bonds=(i - a, j - a, o))
    whole = sanitized_smiles(mol)
    if whole is None or len(Chem.GetMolFrags(mol)) == 1:
        return whole, whole  # one fragment: EDM's second sanitisation would give the same SMILES
    return whole, sanitized_smiles(largest_fragment(mol))


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


def edm_rdkit_mols(mols: MoleculeSet, graph: BondGraph) -> list:
    """RDKit molecules with 3D conformers and EDM's bonds (for SDF files and pictures); sanitised
    where RDKit accepts them, written as they are otherwise."""
    out = []
    with quiet_rdkit():
        for m in range(len(mols)):
            a, b = mols.offsets[m], mols.offsets[m + 1]
            i, j, o = graph.of(m)
            mol = make_mol(mols.numbers[a:b], mols.positions[a:b], bonds=(i - a, j - a, o), explicit_h_only=True)
            mol = mol.GetMol()
            try:
                Chem.SanitizeMol(mol)
            except Exception:  # invalid molecules are kept (and counted invalid by the evaluation)
                mol.UpdatePropertyCache(strict=False)
                Chem.FastFindRings(mol)  # a failed sanitisation can leave no ring info: SMILES and writers need it
            out.append(mol)
    return out
