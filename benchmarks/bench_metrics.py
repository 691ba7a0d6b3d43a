"""Core metrics on 10,000 real QM9 test molecules, both protocols (target: <= 30 s on 2 cores).

EDM's own evaluation code took 355 s for the 13,083 test molecules on this kind of machine.
python benchmarks/bench_metrics.py
"""

import time

import numpy as np

from moldiff.data import QM9_VOCAB
from moldiff.data.qm9 import load_qm9
from moldiff.metrics.evaluate import evaluate
from moldiff.metrics.novelty import training_smiles
from moldiff.metrics.reference import reference_stats

if __name__ == "__main__":
    ref = reference_stats()  # cached after the first call
    train = {p: training_smiles(p) for p in ("edm", "corrected")}  # cached after the first call
    mols = load_qm9("test").subset(np.arange(10_000))
    t = time.perf_counter()
    r = evaluate(mols, QM9_VOCAB, reference=ref, train_smiles=train)
    total = time.perf_counter() - t
    print(f"10,000 molecules, all core metrics, both protocols: {total:.1f} s")
    for k, v in r["seconds"].items():
        print(f"  {k:<13} {v:6.1f} s")
