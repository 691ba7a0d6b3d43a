"""Molecules as the objects chemists' tools take: RDKit ``Mol``s (with a 3D conformer) and ASE
``Atoms``. Works on any ``MoleculeSet``: samples (``DiffusionModel.sample``), datasets, files."""

from __future__ import annotations

import numpy as np

from moldiff.chem.determine_bonds import perceive
from moldiff.chem.edm_protocol import edm_bond_graph
from moldiff.chem.edm_rdkit import edm_rdkit_mols
from moldiff.chem.rdkit_mol import make_mol, quiet_rdkit
from moldiff.data.elements import Vocabulary
from moldiff.data.molecules import MoleculeSet
from moldiff.data.user import infer_vocabulary

BONDS = ("own", "best", "perceive", "edm")


def to_rdkit(mols: MoleculeSet, bonds: str | None = None, vocab: Vocabulary | None = None) -> list:
    """One RDKit molecule per molecule, each with a 3D conformer.

    ``bonds=None`` (default): ``"own"`` when the set carries bonds (a bond-generating model,
    ``mols.has_bonds``), else ``"best"``.
    ``"own"``: the set's own bonds and formal charges.
    ``"best"``: what ``samples.sdf`` holds: the corrected protocol's bonds and formal charges where
    perception finds a valid structure, EDM's distance bonds otherwise.
    ``"perceive"``: RDKit's ``rdDetermineBonds`` with bond orders and formal charges (the
    corrected protocol): each molecule's total charge from its ``charge`` property (SDF formal
    charges) where given, otherwise searched; None for a molecule with no valid structure.
    ``"edm"``: EDM's distance-table bonds; ``vocab`` picks the bond table (QM9's or GEOM's,
    inferred from the elements by default).
    A molecule RDKit cannot sanitise (wrong valences) is kept as it is, with what RDKit needs to
    write it (SDF, SMILES): every molecule returned can be written.
    """
    if bonds is None:
        bonds = "own" if mols.has_bonds else "best"
    if bonds == "own":
        return [own_bonds_mol(mols, m) for m in range(len(mols))]
    if bonds == "edm":
        return edm_rdkit_mols(mols, edm_bond_graph(mols, vocab if vocab is not None else infer_vocabulary(mols)))
    if bonds in ("perceive", "best"):
        found = perceived_structures(mols)
        if bonds == "perceive":
            return [p.mol for p in found]
        perceived = [p.mol if p.failure is None else None for p in found]
        missing = [m for m, mol in enumerate(perceived) if mol is None]
        if missing:
            edm = to_rdkit(mols.subset(np.array(missing)), "edm", vocab if vocab is not None else infer_vocabulary(mols))
            for m, mol in zip(missing, edm):
                perceived[m] = mol
        return perceived
    raise ValueError(f"bonds: use one of {BONDS} or None, got {bonds!r}")


def perceived_structures(mols: MoleculeSet, valences: str = "kekule") -> list:
    """The corrected protocol's ``Perceived`` for each molecule (``mol`` None where it finds no
    valid structure), at the ``charge`` property's total charge where given, searched otherwise."""
    given = np.asarray(mols.properties.get("charge", np.full(len(mols), np.nan)), np.float64)
    with quiet_rdkit():
        return [perceive(numbers, positions, None if np.isnan(q) else int(q), valences) for (numbers, positions), q in zip(mols, given)]


def own_bonds_mol(mols: MoleculeSet, m: int):
    """Molecule ``m`` with the set's own bonds and formal charges, sanitised where RDKit accepts it."""
    from rdkit import Chem

    numbers, positions = mols[m]
    i, j, order = mols.bonds_of(m).T
    mol = make_mol(numbers, positions, bonds=(i, j, np.where(order == 4, 1.5, order)), explicit_h_only=True)
    for atom, q in zip(mol.GetAtoms(), mols.charges_of(m).tolist()):
        atom.SetFormalCharge(int(q))
    mol = mol.GetMol()
    with quiet_rdkit():
        try:
            Chem.SanitizeMol(mol)
        except Exception:  # kept, as EDM-bond molecules are (edm_rdkit_mols)
            mol.UpdatePropertyCache(strict=False)
            Chem.FastFindRings(mol)
    return mol


def to_ase(mols: MoleculeSet) -> list:
    """One ``ase.Atoms`` per molecule (positions in Å)."""
    from ase import Atoms  # ASE is only needed here

    return [Atoms(numbers=numbers, positions=positions) for numbers, positions in mols]
