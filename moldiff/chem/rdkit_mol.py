"""Building RDKit molecules from atoms, coordinates and bonds."""

from __future__ import annotations

import numpy as np
from rdkit import Chem, RDLogger, rdBase
from rdkit.Geometry import Point3D

RDLogger.DisableLog("rdApp.*")  # sanitisation failures are counted, not printed per molecule


def quiet_rdkit():
    """Block RDKit's log while alive (``with quiet_rdkit():``). Needed besides ``DisableLog``
    because other packages (PoseBusters) switch RDKit's log back on."""
    return rdBase.BlockLogs()

BOND_TYPES = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE, 1.5: Chem.BondType.AROMATIC}


def make_mol(numbers, positions=None, bonds=None, explicit_h_only: bool = False) -> Chem.RWMol:
    """An ``RWMol`` with the given atoms, an optional conformer and optional (i, j, order) bonds.

    ``explicit_h_only`` stops RDKit from adding implicit hydrogens (right when every H is explicit).
    """
    mol = Chem.RWMol()
    for z in np.asarray(numbers).tolist():
        atom = Chem.Atom(int(z))
        if explicit_h_only:
            atom.SetNoImplicit(True)
        mol.AddAtom(atom)
    if positions is not None:
        conf = Chem.Conformer(len(numbers))
        for k, (x, y, z) in enumerate(np.asarray(positions, np.float64).tolist()):
            conf.SetAtomPosition(k, Point3D(x, y, z))
        mol.AddConformer(conf, assignId=True)
    if bonds is not None:
        for i, j, o in zip(*bonds):
            mol.AddBond(int(i), int(j), BOND_TYPES[float(o) if float(o) == 1.5 else int(o)])
    return mol


def sanitized_smiles(mol: Chem.Mol) -> str | None:
    """Canonical SMILES after ``SanitizeMol``, or None when sanitisation fails (EDM's ``mol2smiles``)."""
    try:
        Chem.SanitizeMol(mol)
    except ValueError:  # RDKit's valence/kekulisation errors derive from ValueError
        return None
    return Chem.MolToSmiles(mol)


def largest_fragment(mol: Chem.Mol) -> Chem.Mol:
    """Largest fragment by atom count (first on ties), as EDM picks it."""
    frags = Chem.GetMolFrags(mol, asMols=True)
    return max(frags, default=mol, key=lambda m: m.GetNumAtoms())
