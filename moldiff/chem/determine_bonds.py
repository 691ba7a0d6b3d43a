"""The corrected protocol: bonds, orders and formal charges by RDKit's ``rdDetermineBonds``.

Connectivity comes from covalent radii (``DetermineConnectivity``); bond orders and formal
charges from ``DetermineBondOrders`` (the xyz2mol algorithm) for the molecule's total charge.
Radii alone bond across strained small rings (5 % of real QM9 test molecules, e.g.
2-oxabicyclo[2.1.1]hexane, fail that way), so when the fast radius rule finds no valid, stable
structure free of charge separation (more charged atoms than the total charge needs),
connectivity is recomputed by extended Hückel (``useHueckel=True``: 1.7 ms against 0.15 ms per
QM9 molecule); Hückel's answer is taken when it is valid and stable, else the radius rule's when
that one is, else Hückel's failure is reported.

Atom order matters, and two RDKit defects are worked around here (all found on real GEOM-Drugs
conformers):

* Hückel connectivity puts the total charge on atom 0 as a formal charge (to count electrons) and
  leaves it there; bond orders then treat that atom as another element. It is reset to 0.
* ``DetermineBondOrders`` tries valence combinations in lexicographic order (the first atom's
  choice varies slowest) and returns the first that saturates every atom with the right charge, so
  early atoms keep their first-listed valence and later ones absorb what is left. RDKit lists
  S as (6, 3, 2) and O as (2, 1, 3): in atom order, a thioether S met before a carbonyl O became
  S+ with an O- (``[S+]=C...C[O-]``), and a nitro N met before other O atoms stayed N with two O-
  while O+ appeared elsewhere: valid, stable, and the wrong molecule (35 of 999 RDKit conformers of
  GEOM test molecules). Atoms are therefore listed H and C first, O before N, S last (``_RANK``),
  with the reverse order within each element tried when that leaves more charged atoms than the
  total charge needs; 999 of 999 then give the input molecule.
* For a combination it accepts, ``DetermineBondOrders`` applies a carbocation correction to any
  three-connected carbon (sp2 ones included) once the running charge of the atoms before it is 2
  below the target, and then writes a structure of the wrong net charge: an error, not a retry
  (14 real conformers of a nitrofuran, "no structure for charge 0"). With H and C first the
  running charge is 0 at every carbon, so the correction cannot fire for total charges <= +1.

Valence is counted on the Kekulé structure, so an aromatic bond counts 1 or 2, never an
integer-cast 1.5, and stability asks for an allowed (element, formal charge, valence) triple:
neutral carbon must have valence 4 (no MiDi-style neutral C with valence 3); N+ with 4 and O- with
1 are fine. For GEOM-Drugs (``valences="geom"``) stability is "GEOM-Drugs Revisited"'s
aromatic-aware rule instead: (element, formal charge) -> allowed (aromatic bonds, non-aromatic
valence) pairs on RDKit's aromatic molecule (``data/geom_valencies.json``, MIT, see
``data/NOTICE``); elements that table lacks (Al, As, Hg) keep the Kekulé rule.

The total charge is used when known (``charge=int``). When it is not (``charge=None``: XYZ files,
SDF records without charged atoms, generated molecules) it is searched in ``CHARGE_SEARCH`` order,
0 first, skipping charges that leave an odd number of electrons (no closed-shell structure exists
then), and the first charge giving a valid, fully stable structure in no more fragments than the
radius rule finds is kept; when none does, charge 0's answer is reported. A non-zero charge is
kept only when it sits on usual ionisable sites (``_ionic_site``: ammonium, aromatic or amidinium
N+, an acid's O-), other charged atoms cancelling (nitro, N-oxide): otherwise a molecule with one
H too few or too many would pass as a carbocation, iminium, oxonium or enolate ion.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDetermineBonds

from moldiff.chem.rdkit_mol import make_mol
from moldiff.data.elements import ALLOWED_VALENCES, ATOMIC_NUMBER

VALENCE_RULES = ("kekule", "geom")
# Total charges tried, in this order, when a molecule's is unknown. Beyond |2| a drug-like
# molecule is very rare, and more charges would only let broken molecules pass as ions.
CHARGE_SEARCH = (0, 1, -1, 2, -2)


@dataclass
class Perceived:
    """One molecule under the corrected protocol."""

    mol: Chem.Mol | None  # sanitised molecule with bond orders and charges, or None
    connectivity: np.ndarray  # (B, 2) local atom pairs bonded by covalent radii
    atom_stable: np.ndarray  # (N,) bool
    smiles: str | None  # canonical SMILES of the whole molecule when valid
    n_fragments: int
    failure: str | None  # why no valid structure was found
    charge: int = 0  # the total charge the structure was perceived with
    searched: bool = False  # charge unknown and 0 gave no valid, stable, unsplit structure: others tried

    @property
    def ok(self) -> bool:
        """Valid and every atom stable."""
        return self.failure is None and bool(self.atom_stable.all())


def atom_is_stable(z: int, charge: int, valence: int) -> bool:
    """The Kekulé rule: (element, formal charge, valence) allowed."""
    return valence in ALLOWED_VALENCES.get(z, {}).get(charge, ())


@lru_cache(maxsize=1)
def geom_valency_table() -> dict[tuple[int, int], frozenset]:
    """(atomic number, formal charge) -> allowed (aromatic bonds, non-aromatic valence) pairs."""
    raw = json.loads((Path(__file__).parent / "data" / "geom_valencies.json").read_text())["valency_table"]
    return {
        (ATOMIC_NUMBER[el], int(q)): frozenset(tuple(pair) for pair in pairs)
        for el, by_charge in raw.items()
        for q, pairs in by_charge.items()
    }


def geom_atom_is_stable(z: int, charge: int, n_aromatic: int, valence: int) -> bool:
    """GEOM-Drugs Revisited's rule: ``valence`` counts non-aromatic bonds (orders) and H."""
    return (n_aromatic, valence) in geom_valency_table().get((z, charge), ())


def mol_stability(mol: Chem.Mol, valences: str = "kekule") -> np.ndarray:
    """(n,) whether each atom of a sanitised molecule is stable under ``valences`` (the rules above)."""
    return _stability(mol, valences)


def _stability(mol: Chem.Mol, valences: str) -> np.ndarray:
    kek = Chem.Mol(mol)
    Chem.Kekulize(kek, clearAromaticFlags=True)
    out = []
    geom_elements = {z for z, _ in geom_valency_table()} if valences == "geom" else set()
    for atom, kek_atom in zip(mol.GetAtoms(), kek.GetAtoms()):
        z, q = atom.GetAtomicNum(), atom.GetFormalCharge()
        if z in geom_elements:
            aromatic = [b.GetIsAromatic() for b in atom.GetBonds()]
            rest = sum(b.GetBondTypeAsDouble() for b, a in zip(atom.GetBonds(), aromatic) if not a)
            out.append(geom_atom_is_stable(z, q, sum(aromatic), int(round(rest)) + atom.GetTotalNumHs()))
        else:
            valence = int(round(sum(b.GetBondTypeAsDouble() for b in kek_atom.GetBonds()))) + kek_atom.GetTotalNumHs()
            out.append(atom_is_stable(z, q, valence))
    return np.array(out, bool)


_libc = ctypes.CDLL(None)


@contextmanager
def _quiet_c_output():
    """Silence C-level stdout and stderr: YAeHMOP (Hückel) prints distance warnings there."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        _libc.fflush(None)  # C stdio may buffer them; flush into /dev/null, not later
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


# Where an atom stands in DetermineBondOrders' list decides which structure it returns (module
# docstring): H and C (one valence each) first, O before N so that a nitro N takes N+ rather than
# forcing O+ elsewhere, S last so that its listed preference for S+ over S cannot be paid for by
# an O- or N+ after it. Other elements sit between C and O.
_RANK = {1: 0, 6: 0, 8: 2, 7: 3, 16: 4}


def _n_charged(mol: Chem.Mol) -> int:
    return sum(a.GetFormalCharge() != 0 for a in mol.GetAtoms())


def _bond_orders(mol: Chem.Mol, numbers, charge: int) -> Chem.Mol:
    """Orders and formal charges for ``mol``'s bonds, atoms in ``_RANK`` order; where that gives
    no structure or more charged atoms than ``charge`` needs, the order reversed within each rank
    is tried too and the structure with fewer charged atoms kept. Raises when neither works."""
    rank = np.array([_RANK.get(int(z), 1) for z in numbers])
    best, error = None, None
    for flip in (1, -1):
        order = np.lexsort((flip * np.arange(len(rank)), rank))
        try:
            work = Chem.RenumberAtoms(mol, order.tolist())
            rdDetermineBonds.DetermineBondOrders(work, charge=charge, allowChargedFragments=True, embedChiral=False)
        except (ValueError, RuntimeError) as err:
            error = err
            continue
        if best is None or _n_charged(work) < _n_charged(best):
            best = Chem.RenumberAtoms(work, np.argsort(order).tolist())
        if _n_charged(best) <= abs(charge):
            break
    if best is None:
        raise error
    return best


def _attempt(numbers, positions, charge: int, hueckel: bool, valences: str = "kekule") -> Perceived:
    n = len(numbers)
    mol = make_mol(numbers, positions, explicit_h_only=True)
    if hueckel:
        with _quiet_c_output():
            rdDetermineBonds.DetermineConnectivity(mol, useHueckel=True, charge=charge)
        for atom in mol.GetAtoms():  # Hückel leaves the total charge on atom 0 (module docstring)
            atom.SetFormalCharge(0)
    else:
        rdDetermineBonds.DetermineConnectivity(mol, useHueckel=False)
    conn = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()], np.int64).reshape(-1, 2)
    n_frag = len(Chem.GetMolFrags(mol)) if n else 0
    try:
        mol = _bond_orders(mol, numbers, charge)
        Chem.SanitizeMol(mol)
    except (ValueError, RuntimeError) as err:
        # No Lewis structure for this geometry: no atom's valence can be trusted.
        failure = f"bond orders: {str(err).splitlines()[0][:80]}"
        return Perceived(None, conn, np.zeros(n, bool), None, n_frag, failure, charge)
    net = sum(a.GetFormalCharge() for a in mol.GetAtoms())
    failure = None if net == charge else f"net charge {net}"
    smiles = Chem.MolToSmiles(mol) if failure is None else None
    return Perceived(mol, conn, _stability(mol, valences), smiles, n_frag, failure, charge)


def _perceive_at(numbers, positions, charge: int, valences: str) -> Perceived:
    fast = _attempt(numbers, positions, charge, hueckel=False, valences=valences)
    if fast.ok and _n_charged(fast.mol) <= abs(charge):
        return fast
    # A charge-separated answer may come from a bond across a strained ring: ask Hückel.
    slow = _attempt(numbers, positions, charge, hueckel=True, valences=valences)
    return fast if fast.ok and not slow.ok else slow


def _ionic_site(atom: Chem.Atom) -> bool:
    """An ionised group usual in drug-like molecules: ammonium N+ (single bonds only), aromatic N+,
    amidinium or guanidinium =N+ (its carbon also bears another N), or an acid's O- (on a C, S or
    P that carries a =O: carboxylate, sulfonate, phosphate)."""
    z, q = atom.GetAtomicNum(), atom.GetFormalCharge()
    if z == 7 and q == 1:
        bonds = atom.GetBonds()
        if atom.GetIsAromatic() or all(b.GetBondType() == Chem.BondType.SINGLE for b in bonds):
            return True
        double = [b.GetOtherAtom(atom) for b in bonds if b.GetBondType() == Chem.BondType.DOUBLE]
        return len(double) == 1 and double[0].GetAtomicNum() == 6 and sum(n.GetAtomicNum() == 7 for n in double[0].GetNeighbors()) >= 2
    if z == 8 and q == -1 and atom.GetDegree() == 1:
        x = atom.GetNeighbors()[0]
        return x.GetAtomicNum() in (6, 15, 16) and any(
            b.GetBondType() == Chem.BondType.DOUBLE and b.GetOtherAtom(x).GetAtomicNum() == 8 for b in x.GetBonds()
        )
    return False


def _plausible_ion(mol: Chem.Mol) -> bool:
    """Every charge off the ionisable sites cancels (module docstring)."""
    return sum(a.GetFormalCharge() for a in mol.GetAtoms() if not _ionic_site(a)) == 0


def perceive(numbers: np.ndarray, positions: np.ndarray, charge: int | None = 0, valences: str = "kekule") -> Perceived:
    """Bonds, orders, charges and stability of one molecule from its 3D structure.

    ``charge``: the molecule's total charge, or None to search it (module docstring).
    ``valences``: ``"kekule"`` or ``"geom"`` (the aromatic-aware GEOM-Drugs rule) for stability.
    """
    if valences not in VALENCE_RULES:
        raise ValueError(f"valences: use one of {VALENCE_RULES}, got {valences!r}")
    if charge is not None:
        return _perceive_at(numbers, positions, int(charge), valences)
    neutral = _perceive_at(numbers, positions, 0, valences)
    # Hückel with too many electrons can break real bonds (a dication read as neutral fell apart
    # into ethylene and two NH3): a charge is kept only if it splits the molecule no further.
    mol = make_mol(numbers, positions, explicit_h_only=True)
    rdDetermineBonds.DetermineConnectivity(mol)
    n_frag = len(Chem.GetMolFrags(mol)) if len(numbers) else 0
    if neutral.ok and neutral.n_fragments <= n_frag:
        return neutral
    electrons = int(np.sum(numbers))
    for q in CHARGE_SEARCH[1:]:
        if (electrons - q) % 2 == 0:
            found = _perceive_at(numbers, positions, q, valences)
            if found.ok and _plausible_ion(found.mol) and found.n_fragments <= n_frag:
                found.searched = True
                return found
    neutral.searched = True
    return neutral
