"""Errors of the property models against EDM's evaluator (Hoogeboom et al. 2022; Satorras et al. 2021's EGNN).

python benchmarks/property_models.py [--guide shipped] [--evaluator shipped] [--out benchmarks/results_property_models.json]

* the evaluator phi_c on clean molecules: MAE on QM9 test (13,831 molecules) and on the second half
  of QM9 train (the protocol's lower bound, on all of it);
* the guide g(z_t, t) on the test set, clean and noised by its own VP process at t = 0.1, 0.3, 0.5
  (one seeded draw per molecule): how much it can still tell apart where guidance acts.

Prints a markdown table with EDM's evaluator errors and the issue's target (2x them) beside.
"""

import argparse
import json
import time

import numpy as np
import torch

from moldiff.data.loader import MoleculeDataset
from moldiff.data.qm9 import QM9_TARGETS, load_qm9
from moldiff.model.property import PropertyModel

# EDM's evaluator errors (Hoogeboom et al. 2022, table 3, "QM9*" row), in our units (eV for orbital energies)
EDM_EVALUATOR = {"alpha": 0.10, "gap": 0.064, "homo": 0.039, "lumo": 0.036, "mu": 0.043, "Cv": 0.040}
SHOWN = {"alpha": ("α (Bohr³)", 1), "gap": ("Δε (meV)", 1000), "homo": ("HOMO (meV)", 1000), "lumo": ("LUMO (meV)", 1000),
         "mu": ("μ (D)", 1), "Cv": ("Cv (cal/mol K)", 1)}
NOISY_T = (0.1, 0.3, 0.5)


def maes(module, split: str, t: float = 0.0, seed: int = 0, batch_size: int = 500) -> dict[str, float]:
    """MAE per output column on ``split``, at noise level t (0: clean)."""
    mols = load_qm9(split)
    ds = MoleculeDataset(mols, module.layout, module.targets)
    g = torch.Generator().manual_seed(seed)
    err = []
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            b = ds[np.arange(start, min(start + batch_size, len(ds)))]
            x, h, tt = b.x, b.h, torch.full((b.n_mol,), float(t))
            if t > 0:
                noisy, _ = module.sde.perturb(b.state(), tt, g)
                x, h = noisy.pos, noisy.atom_type
            pred = module.net.predict(x, h, tt, b.batch, b.n_mol)
            err.append((pred - b.y.view(b.n_mol, -1)).abs().double())
    mae = torch.cat(err).mean(0).tolist()
    return dict(zip(module.targets, mae))


def _cell(value, factor) -> str:
    return "–" if value is None else f"{value * factor:.0f}" if value * factor >= 100 else f"{value * factor:.3g}"


def load(path: str, role: str) -> PropertyModel:
    return PropertyModel.load(path, role=role)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--guide", default="shipped")
    p.add_argument("--evaluator", default="shipped")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    t0 = time.perf_counter()
    ev, guide = load(a.evaluator, "evaluator"), load(a.guide, "guide")
    res = {"evaluator": {"path": a.evaluator, "test": maes(ev, "test"), "train_second_half": maes(ev, "train_second_half")},
           "guide": {"path": a.guide, "test_clean": maes(guide, "test"),
                     **{f"test_t{t}": maes(guide, "test", t) for t in NOISY_T}},
           "edm_evaluator": EDM_EVALUATOR, "seconds": round(time.perf_counter() - t0, 1)}
    print("| property | EDM's φ_c | target (2×) | **φ_c, test** | φ_c, 2nd half | guide, clean | "
          + " | ".join(f"guide, t = {t}" for t in NOISY_T) + " |")
    print("|---" * (6 + len(NOISY_T)) + "|")
    for prop in QM9_TARGETS:
        name, k = SHOWN[prop]
        cells = [EDM_EVALUATOR[prop], 2 * EDM_EVALUATOR[prop], res["evaluator"]["test"].get(prop), res["evaluator"]["train_second_half"].get(prop),
                 res["guide"]["test_clean"].get(prop), *(res["guide"][f"test_t{t}"].get(prop) for t in NOISY_T)]
        print(f"| {name} | " + " | ".join(_cell(c, k) for c in cells) + " |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
