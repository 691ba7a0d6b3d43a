"""Atom pairs and bond graphs for many molecules at once, as flat arrays (no loop over molecules)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


def all_pairs(offsets: np.ndarray, first: int = 0, last: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j inside each molecule ``first..last-1``: (i, j, molecule), global atom indices.

    Ordered by molecule, then i, then j. Molecules are grouped by size so each group is one
    ``triu_indices`` broadcast.
    """
    last = len(offsets) - 1 if last is None else last
    n = np.diff(offsets)[first:last]
    starts = offsets[first:last]
    out_i, out_j, out_m = [], [], []
    for size in np.unique(n):
        if size < 2:
            continue
        mols = np.flatnonzero(n == size)
        ti, tj = np.triu_indices(size, k=1)
        base = starts[mols][:, None]
        out_i.append((base + ti).ravel())
        out_j.append((base + tj).ravel())
        out_m.append(np.repeat(mols + first, len(ti)))
    if not out_i:
        e = np.zeros(0, np.int64)
        return e, e, e
    i, j, m = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_m)
    order = np.lexsort((j, i))  # i is globally increasing with molecule, so this sorts by molecule too
    return i[order], j[order], m[order]


def pair_chunks(offsets: np.ndarray, max_pairs: int = 4_000_000) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``all_pairs`` in molecule chunks of about ``max_pairs`` pairs, to bound memory on big sets."""
    n = np.diff(offsets)
    cum = np.cumsum(n * (n - 1) // 2)
    first = 0
    while first < len(n):
        base = cum[first - 1] if first else 0
        last = int(np.searchsorted(cum, base + max_pairs, side="right"))
        last = max(last, first + 1)
        yield all_pairs(offsets, first, min(last, len(n)))
        first = last


def pair_distances(positions: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Euclidean distances in the positions' dtype (float32 for EDM's protocol)."""
    diff = positions[i] - positions[j]
    return np.sqrt(np.sum(diff * diff, axis=1))


@dataclass
class BondGraph:
    """Bonds of many molecules: (i, j) global atom indices with i < j, order, and per-molecule offsets."""

    i: np.ndarray
    j: np.ndarray
    order: np.ndarray  # 1, 2, 3 (EDM) or 1, 1.5, 2, 3
    offsets: np.ndarray  # (M + 1,) into the bond arrays

    @classmethod
    def from_bonds(cls, i, j, order, mol, n_molecules: int) -> "BondGraph":
        i, j, order, mol = (np.asarray(a) for a in (i, j, order, mol))
        key = np.lexsort((j, i, mol))
        counts = np.bincount(mol, minlength=n_molecules)
        return cls(i[key], j[key], order[key], np.concatenate([[0], np.cumsum(counts)]))

    def of(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = self.offsets[m], self.offsets[m + 1]
        return self.i[a:b], self.j[a:b], self.order[a:b]

    def valence(self, n_atoms: int) -> np.ndarray:
        """Summed bond order per atom."""
        return np.bincount(self.i, self.order, n_atoms) + np.bincount(self.j, self.order, n_atoms)

    def degree(self, n_atoms: int) -> np.ndarray:
        return np.bincount(self.i, minlength=n_atoms) + np.bincount(self.j, minlength=n_atoms)
