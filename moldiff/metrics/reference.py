"""Reference geometry statistics for the distribution distances, cached per source.

The default reference is a fixed random subset (seed 0) of 10,000 QM9 training molecules:
bond-length and angle histograms settle well before that, and it keeps the first call to ~10 s.
"""

from __future__ import annotations

import re
import sys

import numpy as np

from moldiff.data.paths import cache_dir
from moldiff.data.sources import load_source
from moldiff.files import atomic_write
from moldiff.metrics.distribution import GeometryStats, geometry_stats
from moldiff.metrics.protocols import run_corrected


def _save(stats: GeometryStats, path) -> None:
    arrays = {f"type:{k}": np.array(v) for k, v in stats.type_counts.items()}
    arrays.update({f"size:{k}": np.array(v) for k, v in stats.size_counts.items()})
    arrays.update({f"len:{k}": v for k, v in stats.bond_lengths.items()})
    arrays.update({f"ang:{k}": v for k, v in stats.bond_angles.items()})
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def _load(path) -> GeometryStats:
    s = GeometryStats({}, {}, {}, {})
    with np.load(path) as f:
        for k in f.files:
            kind, name = k.split(":", 1)
            if kind == "type":
                s.type_counts[name] = int(f[k])
            elif kind == "size":
                s.size_counts[int(name)] = int(f[k])
            elif kind == "len":
                s.bond_lengths[name] = f[k]
            else:
                s.bond_angles[name] = f[k]
    return s


def reference_stats(spec: str = "qm9:train", max_molecules: int = 10_000, workers: int | None = None) -> GeometryStats:
    is_dataset = spec.split(":")[0] in ("qm9", "qm9_noh")
    path = cache_dir("qm9") / f"reference_{re.sub(r'[^A-Za-z0-9_]+', '_', spec)}_{max_molecules}_v1.npz"
    if is_dataset and path.exists():
        return _load(path)
    if is_dataset:
        print(f"computing {spec}'s reference geometry statistics (once, cached in {path.parent}; ~10 s)", file=sys.stderr, flush=True)
    mols, _, _ = load_source(spec)
    if len(mols) > max_molecules:
        mols = mols.subset(np.sort(np.random.default_rng(0).choice(len(mols), max_molecules, replace=False)))
    stats = geometry_stats(mols, *run_corrected(mols, workers).bonds)
    if is_dataset:
        _save(stats, path)
    return stats
