"""EDM's reference rows for the conditional-design table (Hoogeboom et al. 2022, sec. 5.3), all on
QM9's second training half (molecules the evaluator never saw):

* upper bound: the evaluator phi_c on real molecules scored against *shuffled* property values
  (a generator that ignores its target);
* #Atoms: the property predicted from the atom count alone, E[c | N] fitted on the first half
  (what a model that only gets N right would score);
* lower bound: phi_c on real molecules against their true values (the evaluator's own error).
"""

from __future__ import annotations

import numpy as np


def expected_given_atoms(prop: str, sizes) -> np.ndarray:
    """E[c | N] for each atom count in ``sizes``, fitted on the first half (its overall mean for a
    count the first half lacks)."""
    from moldiff.data.qm9 import load_qm9

    first = load_qm9("train_first_half")
    y1 = np.asarray(first.properties[prop], dtype=np.float64)
    table = {int(k): float(y1[first.n_atoms == k].mean()) for k in np.unique(first.n_atoms)}
    return np.array([table.get(int(k), float(y1.mean())) for k in np.asarray(sizes)])


def atoms_baseline(prop: str, n: int, seed: int = 0) -> float:
    from moldiff.data.qm9 import load_qm9

    second = load_qm9("train_second_half")
    idx = np.random.default_rng(seed).choice(len(second), size=min(n, len(second)), replace=False)
    y2 = np.asarray(second.properties[prop], dtype=np.float64)[idx]
    return float(np.abs(expected_given_atoms(prop, second.n_atoms[idx]) - y2).mean())


def evaluator_bounds(prop: str, evaluator, layout, device, n: int, seed: int = 0, column: int = 0) -> dict[str, float]:
    from moldiff.data.qm9 import load_qm9
    from moldiff.guidance.run import predict

    second = load_qm9("train_second_half")
    idx = np.random.default_rng(seed).choice(len(second), size=min(n, len(second)), replace=False)
    mols = second.subset(idx)
    y = np.asarray(mols.properties[prop], dtype=np.float64)
    pred = predict(evaluator, mols, layout, device, column)
    shuffled = np.random.default_rng(seed + 1).permutation(y)
    return {"upper_bound": float(np.abs(pred - shuffled).mean()), "lower_bound": float(np.abs(pred - y).mean())}
