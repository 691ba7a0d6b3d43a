"""Molecules as the objects chemists' tools take: RDKit ``Mol``s (with a 3D conformer) and ASE
``Atoms``. Works on any ``MoleculeSet``: samples (``DiffusionModel.sample``), datasets, files."""

from __future__ import annotations

import numpy as np

from moldiff.chem.determine_bonds import perceive
from moldiff.chem.edm_protocol import edm_bond_graph
from moldiff.chem.edm_rdkit import edm_rdkit_mols
from moldiff.data.elements import Vocabulary
from moldiff.data.molecules import MoleculeSet
from moldiff.data.user import infer_vocabulary

BONDS = ("edm", "perceive")


def to_rdkit(mols: MoleculeSet, bonds: str = "edm", vocab: Vocabulary | None = None) -> list:
    """One RDKit molecule per molecule.

    ``bonds="edm"``: EDM's distance-table bonds, exactly what ``samples.sdf`` holds (sanitised
    where RDKit accepts the molecule, kept as it is otherwise); ``vocab`` picks the bond table
    (QM9's or GEOM's, inferred from the elements by default).
    ``bonds="perceive"``: RDKit's ``rdDetermineBonds`` with bond orders and formal charges (the
    corrected protocol): each molecule's total charge from its ``charge`` property (SDF formal
    charges) where given, otherwise searched; None for a molecule with no valid structure.
    """
    if bonds == "edm":
        return edm_rdkit_mols(mols, edm_bond_graph(mols, vocab if vocab is not None else infer_vocabulary(mols)))
    if bonds == "perceive":
        given = np.asarray(mols.properties.get("charge", np.full(len(mols), np.nan)), np.float64)
        return [perceive(numbers, positions, None if np.isnan(q) else int(q)).mol for (numbers, positions), q in zip(mols, given)]
    raise ValueError(f"bonds: use one of {BONDS}, got {bonds!r}")


def to_ase(mols: MoleculeSet) -> list:
    """One ``ase.Atoms`` per molecule (positions in Å)."""
    from ase import Atoms  # ASE is only needed here

    return [Atoms(numbers=numbers, positions=positions) for numbers, positions in mols]
