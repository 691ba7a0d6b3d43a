"""Training-set SMILES for novelty, per protocol, computed once and cached next to the QM9 cache.

EDM's reference is the whole-molecule SMILES of every training molecule its own bond rule makes
valid (``retrieve_qm9_smiles``); the corrected protocol's is its own perception of the same set.
"""

from __future__ import annotations

import sys

from moldiff.data.elements import QM9_VOCAB
from moldiff.data.paths import cache_dir
from moldiff.data.qm9 import load_qm9
from moldiff.files import atomic_write
from moldiff.metrics.protocols import run_corrected, run_edm


def training_smiles(protocol: str, split: str = "train", remove_h: bool = False, workers: int | None = None) -> set[str]:
    path = cache_dir("qm9") / f"{'qm9_noh' if remove_h else 'qm9'}_{split}_smiles_{protocol}_v1.txt"
    if path.exists():
        return set(path.read_text().split("\n")) - {""}
    print(f"computing the QM9 {split} SMILES under the {protocol} protocol for novelty (once, cached in {path.parent}; "
          "a minute or two on 2 CPU cores)", file=sys.stderr, flush=True)
    mols = load_qm9(split, remove_h=remove_h)
    outcome = run_edm(mols, QM9_VOCAB) if protocol == "edm" else run_corrected(mols, workers)
    smiles = sorted({s for s in outcome.whole_smiles if s})
    with atomic_write(path) as f:
        f.write("\n".join(smiles) + "\n")
    return set(smiles)
