"""A fragment to design around (issue 30): one SDF or XYZ record with 3D coordinates, checked before
any sampling. Two disconnected pieces in the record mean linking: both stay fixed, the sampler
makes the rest. Every problem is a ``ValueError`` with one line saying what and where."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moldiff.data import report as R
from moldiff.data.elements import Vocabulary, highest_valence
from moldiff.data.molecules import MoleculeSet
from moldiff.data.user import read_molecules

MIN_DISTANCE = 0.5  # Å: closer atoms overlap (the shortest real bond, H-H, is 0.74 Å)


def load_fragment(path, vocab: Vocabulary | None = None) -> MoleculeSet:
    """The fragment as a one-molecule ``MoleculeSet`` (with its bonds and formal charges if an SDF)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"fragment: no file {path}")
    report = R.InputReport()
    try:
        mols, _ = read_molecules(path, report)
    except (ValueError, OSError) as e:  # its message names the file already
        raise ValueError(f"fragment: {e}") from None
    if report.n_rejected:
        raise ValueError(f"fragment {path}: a record could not be read ({report.summary()})")
    if len(mols) != 1:
        raise ValueError(f"fragment {path}: {len(mols)} records; give one (two disconnected pieces in one record mean linking)")
    numbers, pos = mols[0]
    if len(numbers) == 0:
        raise ValueError(f"fragment {path}: the record has no atoms")
    if not np.isfinite(pos).all():
        raise ValueError(f"fragment {path}: non-finite coordinates")
    if len(numbers) > 2 and np.all(pos[:, 2] == 0):
        raise ValueError(f"fragment {path}: every z coordinate is 0, a 2D drawing; give 3D coordinates (e.g. RDKit's EmbedMolecule)")
    if vocab is not None:
        bad = sorted({int(z) for z in numbers[vocab.encode(numbers) < 0]})
        if bad:
            raise ValueError(f"fragment {path}: atomic numbers {bad} are outside the model's vocabulary {vocab.symbols}")
    if len(numbers) > 1:
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(len(numbers)) * 1e9
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if d[i, j] < MIN_DISTANCE:
            raise ValueError(f"fragment {path}: atoms {min(i, j)} and {max(i, j)} overlap ({d[i, j]:.2f} Å apart)")
    return mols


def fragment_anchors(fragment: MoleculeSet, spec="auto") -> np.ndarray:
    """(k,) which fragment atoms may bond to the atoms the sampler makes (the bond model's
    fragment: every other fixed atom keeps "no bond" to them, so a full-valence atom, a hydrogen
    say, cannot take one more). ``spec``: "auto", the atoms whose valence in the file (aromatic
    bonds 1.5) is below the highest their element and formal charge allow (elements outside the
    table count as open); "all"; or a list of 0-based atom indices of the record."""
    k = len(fragment.numbers)
    if isinstance(spec, str) and spec in ("auto", "all"):
        if spec == "all" or not fragment.has_bonds:
            return np.ones(k, bool)
        i, j, order = fragment.bonds_of(0).astype(np.int64).T
        v = np.where(order == 4, 1.5, order)  # an aromatic bond counts 1.5
        valence = np.bincount(i, v, k) + np.bincount(j, v, k)
        charges = fragment.charges_of(0)
        limits = [highest_valence(z, q) for z, q in zip(fragment.numbers.tolist(), charges.tolist())]
        return np.array([lim is None or valence[a] < lim - 0.25 for a, lim in enumerate(limits)], bool)
    try:
        idx = np.asarray([int(a) for a in spec], np.int64)
    except (TypeError, ValueError):
        raise ValueError(f"anchors: 'auto', 'all' or a list of atom indices, got {spec!r}") from None
    if len(idx) and (idx.min() < 0 or idx.max() >= k):
        raise ValueError(f"anchors: atom indices run from 0 to {k - 1} in this fragment, got {sorted(idx.tolist())}")
    out = np.zeros(k, bool)
    out[idx] = True
    return out


def parse_n_atoms(spec) -> tuple[int, int] | None:
    """``n_atoms``: None, a count K, or a range "a-b" -> (lo, hi) inclusive."""
    if spec is None:
        return None
    if isinstance(spec, bool):
        raise ValueError(f"n_atoms: a count or a range a-b, got {spec!r}")
    if isinstance(spec, (int, np.integer)):
        lo = hi = int(spec)
    else:
        text = str(spec).strip()
        parts = text.split("-")
        try:
            lo, hi = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
        except ValueError:
            raise ValueError(f"n_atoms: a count or a range a-b, got {spec!r}") from None
        if len(parts) > 2:
            raise ValueError(f"n_atoms: a count or a range a-b, got {spec!r}")
    if lo < 1 or hi < lo:
        raise ValueError(f"n_atoms: need 1 <= a <= b, got {spec!r}")
    return lo, hi
