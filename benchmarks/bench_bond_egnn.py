"""Training-step time of the bond model's network against today's EGNN at the same width (issue 29:
target <= 1.3x).

python benchmarks/bench_bond_egnn.py [--steps 30] [--warmup 5] [--hidden 128] [--layers 4] [--self-condition]
                                     [--out benchmarks/results_bond_egnn.json]

Both run their real training losses on the same QM9 train batches (64 molecules, with the bond
labels of ``moldiff.chem.bond_labels``): the Gaussian model's ``DiffusionLoss`` (eps on positions
and scaled one-hot features) and the bond model's ``FieldLoss`` (x0 positions, cross-entropy on
types, charges and bonds); forward, backward and an AdamW step, in float32 and in bf16-mixed
(``torch.autocast``, as Lightning's precision flag). Steps alternate between the two models, so
load from elsewhere hits both alike; the figure is the median step time over ``--steps``.
``--self-condition`` adds the bond model with self-conditioning (half of the batches run the
network twice, the first time without gradient); as its steps are of two kinds, compare it by the
mean step time (``mean_step_s``), not the median.
Run it on an idle machine (pause background jobs): the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from moldiff.chem.bond_labels import labelled_split
from moldiff.data.elements import vocabulary
from moldiff.data.loader import MoleculeDataset
from moldiff.data.state_dataset import StateDataset
from moldiff.model import build
from moldiff.nn.cpu_tuning import tune_cpu_allocator
from moldiff.train.bond_module import BondDiffusionModule
from moldiff.train.module import DiffusionModule

NOISE = {"schedule": "polynomial", "power": 2.0, "precision": 1e-5}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--self-condition", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tune_cpu_allocator()
    torch.manual_seed(0)
    mols, _ = labelled_split("qm9:train", progress=True)
    features = {"vocabulary": "qm9", "charges": [-1, 0, 1]}
    states = StateDataset(mols, vocabulary("qm9"), features["charges"])
    gauss = MoleculeDataset(mols, build.feature_layout({"vocabulary": "qm9"}))
    net = {"name": "egnn", "hidden": args.hidden, "layers": args.layers}
    optim = {"lr": 1e-4}
    modules = {
        "egnn": DiffusionModule(net, NOISE, {"weighting": "simple", "timesteps": 1000}, {"vocabulary": "qm9"}, optim,
                                {9: 1}, ema_decay=0.0),
        "bond_egnn": BondDiffusionModule({**net, "name": "bond_egnn"}, {**NOISE, "prediction": "x0"}, {}, features, optim,
                                         {9: 1}, states.marginals(), ema_decay=0.0),
    }
    if args.self_condition:
        modules["bond_egnn_self_conditioned"] = BondDiffusionModule(
            {**net, "name": "bond_egnn", "self_condition": True}, {**NOISE, "prediction": "x0"}, {"self_condition": 0.5},
            features, optim, {9: 1}, states.marginals(), ema_decay=0.0)
    data = {"egnn": gauss, "bond_egnn": states, "bond_egnn_self_conditioned": states}
    opts = {k: torch.optim.AdamW(m.net.parameters(), lr=1e-4) for k, m in modules.items()}
    rng = np.random.default_rng(0)
    results = {}
    for precision in ("32", "bf16-mixed"):
        times = {k: [] for k in modules}
        for step in range(args.warmup + args.steps):
            index = rng.choice(len(states), args.batch, replace=False)
            for name, module in modules.items():
                batch = data[name][index]
                g = torch.Generator().manual_seed(step)
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                    loss = module.batch_loss(batch, False, g).mean()
                loss.backward()
                opts[name].step()
                opts[name].zero_grad(set_to_none=True)
                if step >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in times.items()}
        mean = {k: float(np.mean(v)) for k, v in times.items()}
        results[precision] = {"median_step_s": med, "mean_step_s": mean, "molecules_per_s": {k: args.batch / v for k, v in med.items()},
                              "ratio_bond_over_egnn": med["bond_egnn"] / med["egnn"]}
        if args.self_condition:
            results[precision]["mean_ratio_self_conditioned_over_bond"] = mean["bond_egnn_self_conditioned"] / mean["bond_egnn"]
        print(precision, json.dumps(results[precision], indent=1))
    record = {"command": "python benchmarks/bench_bond_egnn.py " + " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
                                                                 if v not in (None, False) and k != "out"),
              "hidden": args.hidden, "layers": args.layers, "batch": args.batch, "threads": torch.get_num_threads(),
              "load_average_at_end": os.getloadavg(), "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
