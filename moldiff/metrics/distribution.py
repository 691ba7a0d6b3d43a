"""Distribution distances between generated and reference molecules.

Total variation of atom-type and atom-count histograms; 1-Wasserstein distance (scipy) of bond
lengths (Å) per element pair and of bond angles (degrees) per (end, centre, end) element triple.
Bonds are the corrected protocol's covalent connectivity, so these distances do not depend on
EDM's bond-order tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import wasserstein_distance

from moldiff.data.elements import SYMBOLS
from moldiff.data.molecules import MoleculeSet


@dataclass
class GeometryStats:
    """Everything the distances need, for one set of molecules."""

    type_counts: dict[str, int]
    size_counts: dict[int, int]
    bond_lengths: dict[str, np.ndarray]
    bond_angles: dict[str, np.ndarray]


def _angles(pos: np.ndarray, numbers: np.ndarray, i: np.ndarray, j: np.ndarray) -> dict[str, np.ndarray]:
    """Every angle a-c-b between two bonds sharing a centre c, grouped by degree (no per-atom loop)."""
    centre = np.concatenate([i, j])
    other = np.concatenate([j, i])
    order = np.argsort(centre, kind="stable")
    centre, other = centre[order], other[order]
    uniq, start, deg = np.unique(centre, return_index=True, return_counts=True)
    out: dict[str, list] = {}
    for d in np.unique(deg):
        if d < 2:
            continue
        sel = deg == d
        nbrs = other[start[sel][:, None] + np.arange(d)]  # (n_centres, d)
        a_idx, b_idx = np.triu_indices(d, k=1)
        c = np.repeat(uniq[sel], len(a_idx))
        a, b = nbrs[:, a_idx].ravel(), nbrs[:, b_idx].ravel()
        u, v = pos[a] - pos[c], pos[b] - pos[c]
        cos = np.einsum("ij,ij->i", u, v) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1) + 1e-12)
        ang = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
        za, zb = np.minimum(numbers[a], numbers[b]), np.maximum(numbers[a], numbers[b])
        keys = np.stack([za, numbers[c], zb], 1)
        for key in np.unique(keys, axis=0):
            m = (keys == key).all(1)
            name = f"{SYMBOLS[key[0]]}-{SYMBOLS[key[1]]}-{SYMBOLS[key[2]]}"
            out.setdefault(name, []).append(ang[m])
    return {k: np.concatenate(v) for k, v in out.items()}


def geometry_stats(mols: MoleculeSet, bonds_i: np.ndarray, bonds_j: np.ndarray) -> GeometryStats:
    """Histograms and per-type samples from molecules and their bonds (global atom indices)."""
    numbers = mols.numbers.astype(np.int64)
    pos = mols.positions.astype(np.float64)
    zt, ct = np.unique(numbers, return_counts=True)
    st, cs = np.unique(mols.n_atoms, return_counts=True)
    lengths: dict[str, np.ndarray] = {}
    if len(bonds_i):
        d = np.linalg.norm(pos[bonds_i] - pos[bonds_j], axis=1)
        za, zb = np.minimum(numbers[bonds_i], numbers[bonds_j]), np.maximum(numbers[bonds_i], numbers[bonds_j])
        for a, b in np.unique(np.stack([za, zb], 1), axis=0):
            lengths[f"{SYMBOLS[a]}-{SYMBOLS[b]}"] = d[(za == a) & (zb == b)]
    return GeometryStats(
        {SYMBOLS[z]: int(c) for z, c in zip(zt, ct)},
        {int(s): int(c) for s, c in zip(st, cs)},
        lengths,
        _angles(pos, numbers, bonds_i, bonds_j) if len(bonds_i) else {},
    )


def total_variation(p: dict, q: dict) -> float:
    keys = set(p) | set(q)
    sp, sq = max(sum(p.values()), 1), max(sum(q.values()), 1)
    return 0.5 * sum(abs(p.get(k, 0) / sp - q.get(k, 0) / sq) for k in keys)


def _w1_by_type(gen: dict[str, np.ndarray], ref: dict[str, np.ndarray], min_count: int) -> dict:
    """W1 per type present in the reference; the summary weights types by reference frequency.

    A type the generated set lacks gets no W1 (its absence already shows in ``missing``); with no
    type in common the summary is None (undefined, not a distance of 0 or NaN).
    """
    per_type, weights = {}, {}
    for key, r in ref.items():
        if len(r) < min_count or key not in gen or len(gen[key]) == 0:
            continue
        per_type[key] = float(wasserstein_distance(gen[key], r))
        weights[key] = len(r)
    total = sum(weights.values())
    mean = sum(per_type[k] * weights[k] for k in per_type) / total if total else None
    missing = sorted(k for k, r in ref.items() if len(r) >= min_count and k not in gen)
    return {"weighted_mean": mean, "per_type": per_type, "missing_types": missing}


def distribution_distances(gen: GeometryStats, ref: GeometryStats, min_count: int = 50) -> dict:
    return {
        "atom_type_tv": total_variation(gen.type_counts, ref.type_counts),
        "atom_count_tv": total_variation(gen.size_counts, ref.size_counts),
        "bond_length_w1": _w1_by_type(gen.bond_lengths, ref.bond_lengths, min_count),
        "bond_angle_w1": _w1_by_type(gen.bond_angles, ref.bond_angles, min_count),
    }
