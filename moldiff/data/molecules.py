"""``MoleculeSet``: many molecules as flat arrays plus offsets.

Atoms of molecule ``i`` are rows ``offsets[i]:offsets[i + 1]`` of ``numbers`` (atomic numbers)
and ``positions`` (Å, float32). Per-molecule arrays live in ``properties``. Flat arrays load in
milliseconds and batch without Python loops, which is why nothing here stores a list of objects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from moldiff.data import report as R
from moldiff.data.elements import Vocabulary
from moldiff.files import atomic_write


@dataclass
class MoleculeSet:
    numbers: np.ndarray  # (A,) atomic numbers
    positions: np.ndarray  # (A, 3) float32, Å
    offsets: np.ndarray  # (M + 1,) int64, offsets[0] == 0
    properties: dict[str, np.ndarray] = field(default_factory=dict)  # each (M,) or (M, k)

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers)
        self.positions = np.asarray(self.positions, dtype=np.float32).reshape(-1, 3)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.numbers) or len(self.numbers) != len(self.positions):
            raise ValueError("MoleculeSet: offsets, numbers and positions disagree")
        for k, v in self.properties.items():
            if len(v) != len(self):
                raise ValueError(f"MoleculeSet: property {k!r} has {len(v)} rows for {len(self)} molecules")

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
        return cls(
            np.concatenate([s.numbers for s in sets]),
            np.concatenate([s.positions for s in sets]),
            np.concatenate([[0], np.cumsum(counts)]),
            {k: np.concatenate([s.properties[k] for s in sets]) for k in keys},
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

    def subset(self, index) -> "MoleculeSet":
        """Molecules ``index`` (integer array or boolean mask), in that order, without a Python loop."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        counts = self.n_atoms[index]
        starts = self.offsets[:-1][index]
        new_offsets = np.concatenate([[0], np.cumsum(counts)])
        atom_index = np.repeat(starts - new_offsets[:-1], counts) + np.arange(new_offsets[-1])
        return MoleculeSet(
            self.numbers[atom_index],
            self.positions[atom_index],
            new_offsets,
            {k: v[index] for k, v in self.properties.items()},
        )

    def select_atoms(self, mask: np.ndarray) -> "MoleculeSet":
        """Keep atoms where ``mask`` holds (e.g. drop hydrogens); molecules keep their order."""
        counts = np.bincount(self.molecule_index[mask], minlength=len(self))
        return MoleculeSet(
            self.numbers[mask], self.positions[mask], np.concatenate([[0], np.cumsum(counts)]), dict(self.properties)
        )

    def centered(self) -> "MoleculeSet":
        """Each molecule translated to zero centre of (unweighted) mass, as EDM does."""
        mol = self.molecule_index
        n = np.maximum(self.n_atoms, 1)[:, None]
        com = np.zeros((len(self), 3), np.float64)
        np.add.at(com, mol, self.positions.astype(np.float64))
        pos = self.positions - (com / n)[mol].astype(np.float32)
        return MoleculeSet(self.numbers, pos, self.offsets, dict(self.properties))

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
        arrays.update({f"prop.{k}": v for k, v in self.properties.items()})
        with atomic_write(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MoleculeSet":
        with np.load(path, allow_pickle=False) as f:
            props = {k[5:]: f[k] for k in f.files if k.startswith("prop.")}
            return cls(f["numbers"], f["positions"], f["offsets"], props)
