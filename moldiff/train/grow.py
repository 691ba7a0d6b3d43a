"""Grow a bond-model training run in place (issue 30): its resume checkpoint (``last.ckpt``) becomes
one of the same run with fragment conditioning (``model.fragment_condition``), so training goes on
exactly where it stopped, with its optimizer moments, EMA, step count, data position and record,
now around random fragments. A warm start (``init_from``) would restart the optimizer instead:
its first steps are full-size, sign-like Adam steps.

    python -m moldiff.train.grow outputs/train/<run>/checkpoints/last.ckpt <new run>/checkpoints/last.ckpt
    python scripts/train.py ... name=<new run> model.fragment_condition=true   # resumes from it

The fixed-atom flag's input column starts at zero in the network and its EMA (``add_fragment_input``)
and with zero moments in the optimizer, so the grown run predicts exactly what the old one did until
training moves it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from moldiff.data.elements import vocabulary
from moldiff.data.state_dataset import BOND_CLASSES
from moldiff.model.checkpoint import read_checkpoint, write_checkpoint
from moldiff.nn.bond_egnn import BondEGNN, add_fragment_input

MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def grow_fragment_condition(ckpt: dict) -> dict:
    """The training checkpoint ``ckpt`` of a bond model without fragment conditioning, grown into one with it."""
    hp = dict(ckpt["hyper_parameters"])
    model = {"self_condition": False, "fragment_condition": False, **hp["model"]}
    if "marginals" not in hp:
        raise ValueError("not a bond-model training checkpoint (no marginals in its hyper-parameters)")
    if model["fragment_condition"]:
        raise ValueError("this run is fragment-conditioned already")
    features = hp["features"]
    sizes = (len(vocabulary(features["vocabulary"])), len(features.get("charges", (-1, 0, 1))), len(BOND_CLASSES))
    net = BondEGNN(*sizes, **{k: v for k, v in model.items() if k != "name"})
    names = [name for name, _ in net.named_parameters()]
    index = names.index("egnn.embedding.weight")  # the optimizer's parameter order is the network's
    atom_in = (sizes[0] + sizes[1]) * (2 if model["self_condition"] else 1)
    out = dict(ckpt)
    out["state_dict"] = add_fragment_input(ckpt["state_dict"], atom_in)
    optimizers = []
    for opt in ckpt.get("optimizer_states", []):
        state = {k: dict(v) for k, v in opt["state"].items()}
        moments = state.get(index, {})
        for key in MOMENTS:
            if key in moments:
                w = moments[key]
                moments[key] = torch.cat([w[:, :atom_in], w.new_zeros(w.shape[0], 1), w[:, atom_in:]], 1)
        optimizers.append({**opt, "state": state})
    out["optimizer_states"] = optimizers
    out["hyper_parameters"] = {**hp, "model": {**model, "fragment_condition": True}}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="the run's last.ckpt")
    ap.add_argument("target", help="where the grown checkpoint goes (the new run's checkpoints/last.ckpt)")
    a = ap.parse_args(argv)
    target = Path(a.target)
    if target.exists():
        raise SystemExit(f"{target} exists; give a new path")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(target, grow_fragment_condition(read_checkpoint(a.source)))
    print(f"wrote {target}: resume it with model.fragment_condition=true")


if __name__ == "__main__":
    main()
