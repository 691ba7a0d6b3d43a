"""Metrics of molecules that come with their own bonds and formal charges (the bond model's, or an
SDF's records): the written graph is judged as written, nothing is re-derived from coordinates.

* valid: RDKit sanitises the graph as written (bonds, orders, formal charges, explicit H only);
  ``connected``: valid and in one piece (the field's "validity and connectivity").
* atom / molecule stability: every atom's (element, formal charge, valence) is allowed by the
  corrected protocol's Kekulé table (``determine_bonds.ALLOWED_VALENCES``), or for GEOM-Drugs
  (``valences="geom"``) by "GEOM-Drugs Revisited"'s aromatic-aware table. A valid molecule is
  judged on RDKit's sanitised graph (aromatic bonds kekulised for the Kekulé rule); an invalid one
  on its bonds as written, aromatic counting 1.5.
* unique: distinct canonical SMILES among the valid ones.
* geometry agrees: the written graph equals the corrected protocol's bonds perceived from the
  coordinates (connectivity and orders, Kekulé-invariant via canonical SMILES), i.e. whether the
  positions say what the graph says.
"""

from __future__ import annotations

import numpy as np
from rdkit import Chem

from moldiff.chem.determine_bonds import atom_is_stable, mol_stability, perceive
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


def graph_metrics(mols: MoleculeSet, geometry: bool = False, valences: str = "kekule", n_total: int | None = None) -> dict:
    """Rates over the written graphs. Molecule-level rates divide by ``n_total`` (every record
    read, rejected ones counting as failures; default ``len(mols)``), atom stability by the atoms
    judged, uniqueness by the valid molecules. ``geometry``: also how often the corrected
    protocol, from the coordinates alone, perceives the same molecule."""
    if not mols.has_bonds:
        raise ValueError("these molecules carry no bonds: graph metrics need the written bonds (MoleculeSet.bonds)")
    n = len(mols)
    n_total = n if n_total is None else int(n_total)
    counts = {"valid": 0, "valid_connected": 0, "molecule_stable": 0, "geometry_agrees": 0}
    atoms_ok = atoms = 0
    smiles = []
    for i in range(n):
        numbers, positions = mols[i]
        raw = written_mol(mols, i)
        mol = _sanitized(raw)
        ok = mol_stability(mol, valences) if mol is not None else atom_stability(raw, numbers, mols.charges_of(i))
        atoms_ok += int(ok.sum())
        atoms += len(ok)
        counts["molecule_stable"] += bool(ok.all())
        if mol is None:
            continue
        counts["valid"] += 1
        counts["valid_connected"] += len(Chem.GetMolFrags(mol)) == 1
        smi = Chem.MolToSmiles(mol)
        smiles.append(smi)
        if geometry:
            p = perceive(numbers, positions, int(mols.charges_of(i).sum()), valences)
            counts["geometry_agrees"] += p.smiles is not None and p.smiles == smi
    rate = lambda c, d: c / d if d else None  # noqa: E731  undefined, not 0, with nothing to divide by
    out = {k: rate(v, n_total) for k, v in counts.items() if geometry or k != "geometry_agrees"}
    out.update(atom_stable=rate(atoms_ok, atoms), unique=rate(len(set(smiles)), len(smiles)), n=n_total, n_judged=n)
    return out


def written_pairs(mols: MoleculeSet) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) global atom indices of every written bond, for the distribution distances."""
    if not mols.has_bonds:
        raise ValueError("these molecules carry no bonds")
    mol = np.repeat(np.arange(len(mols)), np.diff(mols.bond_offsets))
    start = mols.offsets[:-1][mol]
    return mols.bonds[:, 0].astype(np.int64) + start, mols.bonds[:, 1].astype(np.int64) + start
