"""EDM's reference rows for the conditional-design table (Hoogeboom et al. 2022, sec. 5.3), all on
QM9's second training half (molecules the evaluator never saw):

* upper bound: the evaluator phi_c on real molecules scored against *shuffled* property values
  (a generator that ignores its target);
* #Atoms: the property predicted from the atom count alone, E[c | N] fitted on the first half
  (what a model that only gets N right would score);
* lower bound: phi_c on real molecules against their true values (the evaluator's own error).

Also the protocol's (atom count, target) pairs and the evaluator's predictions on clean molecules.
"""

from __future__ import annotations

import numpy as np
import torch

from moldiff.data.loader import MoleculeDataset
from moldiff.data.qm9 import load_qm9


def expected_given_atoms(prop: str, sizes) -> np.ndarray:
    """E[c | N] for each atom count in ``sizes``, fitted on the first half (its overall mean for a
    count the first half lacks)."""
    first = load_qm9("train_first_half")
    y1 = np.asarray(first.properties[prop], dtype=np.float64)
    table = {int(k): float(y1[first.n_atoms == k].mean()) for k in np.unique(first.n_atoms)}
    return np.array([table.get(int(k), float(y1.mean())) for k in np.asarray(sizes)])


def atoms_baseline(prop: str, n: int, seed: int = 0) -> float:
    second = load_qm9("train_second_half")
    idx = np.random.default_rng(seed).choice(len(second), size=min(n, len(second)), replace=False)
    y2 = np.asarray(second.properties[prop], dtype=np.float64)[idx]
    return float(np.abs(expected_given_atoms(prop, second.n_atoms[idx]) - y2).mean())


def evaluator_bounds(prop: str, evaluator, layout, device, n: int, seed: int = 0, column: int = 0) -> dict[str, float]:
    second = load_qm9("train_second_half")
    idx = np.random.default_rng(seed).choice(len(second), size=min(n, len(second)), replace=False)
    mols = second.subset(idx)
    y = np.asarray(mols.properties[prop], dtype=np.float64)
    pred = predict(evaluator, mols, layout, device, column)
    shuffled = np.random.default_rng(seed + 1).permutation(y)
    return {"upper_bound": float(np.abs(pred - shuffled).mean()), "lower_bound": float(np.abs(pred - y).mean())}


def protocol_pairs(prop: str, n: int, seed: int, remove_h: bool = False):
    """(atom counts, targets) of n molecules drawn from QM9's second training half."""
    mols = load_qm9("train_second_half", remove_h=remove_h)
    idx = np.random.default_rng(seed).choice(len(mols), size=n, replace=n > len(mols))
    return mols.n_atoms[idx].astype(np.int64), np.asarray(mols.properties[prop], dtype=np.float64)[idx]


def predict(net, mols, layout, device, column: int = 0, batch_size: int = 500) -> np.ndarray:
    """Predictions of output ``column`` on clean molecules (t = 0)."""
    ds = MoleculeDataset(mols, layout)
    out = []
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            b = ds[np.arange(start, min(start + batch_size, len(ds)))].to(device)
            t = torch.zeros(b.n_mol, device=device)
            out.append(net.predict(b.x, b.h, t, b.batch, b.n_mol)[:, column].double().cpu().numpy())
    return np.concatenate(out)
