"""Metrics of molecules that come with their own bonds and formal charges (the bond model's, or an
SDF's records): the written graph is judged as written, nothing is re-derived from coordinates.

* valid: RDKit sanitises the graph as written (bonds, orders, formal charges, explicit H only);
  ``connected``: valid and in one piece (the field's "validity and connectivity").
* atom / molecule stability: every atom's (element, formal charge, valence) is allowed by the
  corrected protocol's Kekulé table (``determine_bonds.ALLOWED_VALENCES``; aromatic bonds count
  1.5, so an atom with aromatic bonds is judged after RDKit kekulises a valid molecule).
* unique: distinct canonical SMILES among the valid ones.
* geometry agrees: the written graph equals the corrected protocol's bonds perceived from the
  coordinates (connectivity and orders, Kekulé-invariant via canonical SMILES), i.e. whether the
  positions say what the graph says.
"""

from __future__ import annotations

import numpy as np
from rdkit import Chem

from moldiff.chem.determine_bonds import atom_is_stable, perceive
from moldiff.chem.rdkit_mol import make_mol, quiet_rdkit
from moldiff.data.molecules import MoleculeSet

ORDER_OF_CODE = {1: 1, 2: 2, 3: 3, 4: 1.5}


def written_mol(mols: MoleculeSet, i: int) -> Chem.RWMol:
    """Molecule ``i`` as written: atoms, conformer, its bonds and formal charges, no implicit H."""
    numbers, positions = mols[i]
    b = mols.bonds_of(i)
    mol = make_mol(numbers, positions, (b[:, 0], b[:, 1], [ORDER_OF_CODE[int(o)] for o in b[:, 2]]), explicit_h_only=True)
    for atom, q in zip(mol.GetAtoms(), mols.charges_of(i).tolist()):
        atom.SetFormalCharge(int(q))
    return mol


def _sanitized(mol: Chem.Mol) -> Chem.Mol | None:
    mol = Chem.Mol(mol)
    try:
        with quiet_rdkit():
            Chem.SanitizeMol(mol)
    except (ValueError, RuntimeError):
        return None
    return mol


def atom_stability(mol: Chem.Mol, numbers, charges) -> np.ndarray:
    """(n,) whether each atom's (element, charge, valence) is allowed; valence from the bonds as
    written (aromatic 1.5), rounded, with explicit H only."""
    valence = np.zeros(len(numbers))
    for bond in mol.GetBonds():
        v = bond.GetBondTypeAsDouble()
        valence[bond.GetBeginAtomIdx()] += v
        valence[bond.GetEndAtomIdx()] += v
    return np.array([atom_is_stable(int(z), int(q), int(round(v))) for z, q, v in zip(numbers, charges, valence)], bool)


def graph_metrics(mols: MoleculeSet, geometry: bool = False) -> dict:
    """Figures over the written graphs (fractions; ``n`` molecules). ``geometry``: also how often
    the corrected protocol, from the coordinates alone, perceives the same molecule."""
    if not mols.has_bonds:
        raise ValueError("these molecules carry no bonds: graph metrics need the written bonds (MoleculeSet.bonds)")
    n = len(mols)
    valid = np.zeros(n, bool)
    connected = np.zeros(n, bool)
    stable = np.zeros(n, bool)
    agrees = np.zeros(n, bool)
    atoms_ok = atoms = 0
    smiles = []
    for i in range(n):
        numbers, positions = mols[i]
        raw = written_mol(mols, i)
        ok = atom_stability(raw, numbers, mols.charges_of(i))
        atoms_ok += int(ok.sum())
        atoms += len(ok)
        stable[i] = bool(ok.all())
        mol = _sanitized(raw)
        if mol is None:
            continue
        valid[i] = True
        connected[i] = len(Chem.GetMolFrags(mol)) == 1
        smi = Chem.MolToSmiles(mol)
        smiles.append(smi)
        if geometry:
            p = perceive(numbers, positions, int(mols.charges_of(i).sum()))
            agrees[i] = p.smiles is not None and p.smiles == smi
    out = {"n": n, "valid": float(valid.mean()) if n else 0.0, "valid_connected": float(connected.mean()) if n else 0.0,
           "atom_stable": atoms_ok / max(atoms, 1), "molecule_stable": float(stable.mean()) if n else 0.0,
           "unique": len(set(smiles)) / max(len(smiles), 1)}
    if geometry:
        out["geometry_agrees"] = float(agrees.mean()) if n else 0.0
    return out
