"""``MoleculeSet``: many molecules as flat arrays plus offsets.

Atoms of molecule ``i`` are rows ``offsets[i]:offsets[i + 1]`` of ``numbers`` (atomic numbers)
and ``positions`` (Å, float32). Per-molecule arrays live in ``properties``. Flat arrays load in
milliseconds and batch without Python loops, which is why nothing here stores a list of objects.

A model that makes bonds (or data that carries them) adds two optional fields: ``charges`` (A,)
formal charges, and ``bonds`` (B, 3) rows ``(i, j, order)`` with atom indices local to their
molecule (i < j), molecule ``k``'s rows being ``bond_offsets[k]:bond_offsets[k + 1]``. Orders are
``BOND_ORDERS``' codes: 1 single, 2 double, 3 triple, 4 aromatic. Local indices keep ``subset``
free of renumbering; absent fields (None) mean "not known", not "none".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from moldiff.data import report as R
from moldiff.data.elements import Vocabulary
from moldiff.files import atomic_write

BOND_ORDERS = (1, 2, 3, 4)  # single, double, triple, aromatic (0 is "no bond" wherever pairs are dense)


@dataclass
class MoleculeSet:
    numbers: np.ndarray  # (A,) atomic numbers
    positions: np.ndarray  # (A, 3) float32, Å
    offsets: np.ndarray  # (M + 1,) int64, offsets[0] == 0
    properties: dict[str, np.ndarray] = field(default_factory=dict)  # each (M,) or (M, k)
    charges: np.ndarray | None = None  # (A,) int8 formal charges
    bonds: np.ndarray | None = None  # (B, 3) int32 (i, j, order), local atom indices, i < j
    bond_offsets: np.ndarray | None = None  # (M + 1,) int64
    fixed: np.ndarray | None = None  # (A,) bool: atoms a constrained sampler kept as given (a fragment's)

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers)
        self.positions = np.asarray(self.positions, dtype=np.float32).reshape(-1, 3)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.numbers) or len(self.numbers) != len(self.positions):
            raise ValueError("MoleculeSet: offsets, numbers and positions disagree")
        for k, v in self.properties.items():
            if len(v) != len(self):
                raise ValueError(f"MoleculeSet: property {k!r} has {len(v)} rows for {len(self)} molecules")
        if self.charges is not None:
            self.charges = np.asarray(self.charges, dtype=np.int8).reshape(-1)
            if len(self.charges) != len(self.numbers):
                raise ValueError(f"MoleculeSet: {len(self.charges)} formal charges for {len(self.numbers)} atoms")
        if self.fixed is not None:
            self.fixed = np.asarray(self.fixed, dtype=bool).reshape(-1)
            if len(self.fixed) != len(self.numbers):
                raise ValueError(f"MoleculeSet: {len(self.fixed)} fixed-atom flags for {len(self.numbers)} atoms")
        if (self.bonds is None) != (self.bond_offsets is None):
            raise ValueError("MoleculeSet: bonds and bond_offsets come together")
        if self.bonds is not None:
            self.bonds = np.asarray(self.bonds, dtype=np.int32).reshape(-1, 3)
            self.bond_offsets = np.asarray(self.bond_offsets, dtype=np.int64)
            if len(self.bond_offsets) != len(self) + 1 or self.bond_offsets[0] != 0 or self.bond_offsets[-1] != len(self.bonds):
                raise ValueError("MoleculeSet: bond_offsets and bonds disagree")
            if len(self.bonds):
                n_of_bond = np.repeat(self.n_atoms, np.diff(self.bond_offsets))
                i, j, order = self.bonds.T
                if (i < 0).any() or (i >= j).any() or (j >= n_of_bond).any() or not np.isin(order, BOND_ORDERS).all():
                    raise ValueError("MoleculeSet: bonds must be (i, j, order) with 0 <= i < j < atoms of the molecule "
                                     f"and order in {BOND_ORDERS}")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_list(cls, molecules: Iterable[tuple[Sequence[int], np.ndarray]], **properties) -> "MoleculeSet":
        """From (atomic numbers, positions) pairs."""
        nums, poss = [], []
        for z, x in molecules:
            nums.append(np.asarray(z, dtype=np.int64).reshape(-1))
            poss.append(np.asarray(x, dtype=np.float32).reshape(-1, 3))
        counts = np.array([len(z) for z in nums], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        numbers = np.concatenate(nums) if nums else np.zeros(0, np.int64)
        positions = np.concatenate(poss) if poss else np.zeros((0, 3), np.float32)
        props = {k: np.asarray(v) for k, v in properties.items()}
        return cls(numbers.astype(np.int16), positions, offsets, props)

    @classmethod
    def concatenate(cls, sets: Sequence["MoleculeSet"]) -> "MoleculeSet":
        sets = [s for s in sets if len(s)] or list(sets[:1])
        counts = np.concatenate([s.n_atoms for s in sets])
        keys = set.intersection(*(set(s.properties) for s in sets)) if sets else set()
        charges = np.concatenate([s.charges for s in sets]) if sets and all(s.charges is not None for s in sets) else None
        bonds = offsets = None
        if sets and all(s.bonds is not None for s in sets):
            bonds = np.concatenate([s.bonds for s in sets])
            offsets = np.concatenate([[0], np.cumsum(np.concatenate([np.diff(s.bond_offsets) for s in sets]))])
        fixed = np.concatenate([s.fixed for s in sets]) if sets and all(s.fixed is not None for s in sets) else None
        return cls(
            np.concatenate([s.numbers for s in sets]),
            np.concatenate([s.positions for s in sets]),
            np.concatenate([[0], np.cumsum(counts)]),
            {k: np.concatenate([s.properties[k] for s in sets]) for k in keys},
            charges, bonds, offsets, fixed,
        )

    # --- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_atoms(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def molecule_index(self) -> np.ndarray:
        """(A,) index of the molecule each atom belongs to."""
        return np.repeat(np.arange(len(self)), self.n_atoms)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.numbers[a:b], self.positions[a:b]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def has_bonds(self) -> bool:
        return self.bonds is not None

    def bonds_of(self, i: int) -> np.ndarray:
        """(b, 3) rows (i, j, order) of molecule ``i``, local atom indices; needs ``has_bonds``."""
        if self.bonds is None:
            raise ValueError("this MoleculeSet carries no bonds")
        return self.bonds[self.bond_offsets[i] : self.bond_offsets[i + 1]]

    def charges_of(self, i: int) -> np.ndarray:
        """(n,) formal charges of molecule ``i`` (zeros when the set carries none)."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return np.zeros(b - a, np.int8) if self.charges is None else self.charges[a:b]

    def _rows(self, offsets: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat row indices of the chosen molecules' slices of a ragged array, and their new offsets."""
        counts = np.diff(offsets)[index]
        new = np.concatenate([[0], np.cumsum(counts)])
        return np.repeat(offsets[:-1][index] - new[:-1], counts) + np.arange(new[-1]), new

    def subset(self, index) -> "MoleculeSet":
        """Molecules ``index`` (integer array or boolean mask), in that order, without a Python loop."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = index.astype(np.int64)
        atom_index, new_offsets = self._rows(self.offsets, index)
        bonds = bond_offsets = None
        if self.bonds is not None:
            bond_index, bond_offsets = self._rows(self.bond_offsets, index)
            bonds = self.bonds[bond_index]
        return MoleculeSet(
            self.numbers[atom_index],
            self.positions[atom_index],
            new_offsets,
            {k: v[index] for k, v in self.properties.items()},
            None if self.charges is None else self.charges[atom_index],
            bonds, bond_offsets, None if self.fixed is None else self.fixed[atom_index],
        )

    def select_atoms(self, mask: np.ndarray) -> "MoleculeSet":
        """Keep atoms where ``mask`` holds (e.g. drop hydrogens); molecules keep their order."""
        mask = np.asarray(mask, dtype=bool)
        counts = np.bincount(self.molecule_index[mask], minlength=len(self))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        bonds = bond_offsets = None
        if self.bonds is not None:  # keep bonds between kept atoms, renumbered within each molecule
            mol_of_bond = np.repeat(np.arange(len(self)), np.diff(self.bond_offsets))
            gi = self.bonds[:, 0] + self.offsets[mol_of_bond]
            gj = self.bonds[:, 1] + self.offsets[mol_of_bond]
            keep = mask[gi] & mask[gj]
            new_global = np.cumsum(mask) - 1  # an atom's index among kept atoms
            local = lambda g: new_global[g] - offsets[mol_of_bond[keep]]  # noqa: E731
            bonds = np.stack([local(gi[keep]), local(gj[keep]), self.bonds[keep, 2]], 1)
            bond_offsets = np.concatenate([[0], np.cumsum(np.bincount(mol_of_bond[keep], minlength=len(self)))])
        return MoleculeSet(
            self.numbers[mask], self.positions[mask], offsets, dict(self.properties),
            None if self.charges is None else self.charges[mask], bonds, bond_offsets,
            None if self.fixed is None else self.fixed[mask],
        )

    def centered(self) -> "MoleculeSet":
        """Each molecule translated to zero centre of (unweighted) mass, as EDM does."""
        mol = self.molecule_index
        n = np.maximum(self.n_atoms, 1)[:, None]
        com = np.zeros((len(self), 3), np.float64)
        np.add.at(com, mol, self.positions.astype(np.float64))
        pos = self.positions - (com / n)[mol].astype(np.float32)
        return MoleculeSet(self.numbers, pos, self.offsets, dict(self.properties), self.charges, self.bonds, self.bond_offsets,
                           self.fixed)

    # --- checking ---------------------------------------------------------------------------
    def checked(self, vocab: Vocabulary | None, report: R.InputReport, names: Sequence[str] | None = None, return_index: bool = False):
        """Molecules fit for evaluation; each one that is not is counted in ``report`` by reason.

        Rejected: no atoms, non-finite coordinates, an element outside ``vocab``. Flagged but kept:
        one-atom molecules (EDM evaluates them; QM9 without H has methane as a lone C).
        With ``return_index``, also the indices of the molecules kept.
        """
        mol = self.molecule_index
        bad_xyz = np.zeros(len(self), bool)
        np.logical_or.at(bad_xyz, mol, ~np.isfinite(self.positions).all(axis=1))
        bad_elem = np.zeros(len(self), bool)
        if vocab is not None:
            np.logical_or.at(bad_elem, mol, vocab.encode(self.numbers) < 0)
        empty = self.n_atoms == 0
        keep = ~(bad_xyz | bad_elem | empty)
        where = (lambda i: names[i]) if names is not None else (lambda i: f"molecule {i}")
        for i in np.flatnonzero(empty):
            report.reject(R.EMPTY, where(i))
        for i in np.flatnonzero(bad_xyz & ~empty):
            report.reject(R.NONFINITE, where(i))
        for i in np.flatnonzero(bad_elem & ~bad_xyz & ~empty):
            z = self[i][0]
            unknown = sorted({int(v) for v in z[vocab.encode(z) < 0]})
            report.reject(R.UNKNOWN_ELEMENT, where(i), f"atomic numbers {unknown} not in {vocab.name}")
        for i in np.flatnonzero(keep & (self.n_atoms == 1)):
            report.flag(R.SINGLE_ATOM, where(i))
        return (self.subset(keep), np.flatnonzero(keep)) if return_index else self.subset(keep)

    # --- storage ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write an uncompressed .npz atomically (temp file + rename: never a half-written cache)."""
        arrays = {"numbers": self.numbers, "positions": self.positions, "offsets": self.offsets}
        if self.charges is not None:
            arrays["charges"] = self.charges
        if self.bonds is not None:
            arrays.update(bonds=self.bonds, bond_offsets=self.bond_offsets)
        if self.fixed is not None:
            arrays["fixed"] = self.fixed
        arrays.update({f"prop.{k}": v for k, v in self.properties.items()})
        with atomic_write(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MoleculeSet":
        with np.load(path, allow_pickle=False) as f:
            props = {k[5:]: f[k] for k in f.files if k.startswith("prop.")}
            get = lambda key: f[key] if key in f.files else None  # noqa: E731
            return cls(f["numbers"], f["positions"], f["offsets"], props, get("charges"), get("bonds"), get("bond_offsets"),
                       get("fixed"))
