"""EEGSDE's conditional-design protocol for all six QM9 properties in one run (CPU; idle machine).

python benchmarks/guidance_protocol.py [--guide G.ckpt] [--evaluator E.ckpt] [--ckpt shipped] [--n 500]
       [--steps 100] [--scales 1,4] [--clip 1] [--properties alpha,gap,homo,lumo,mu,Cv] [--out results.json]

(atom count, target) pairs come from QM9's second training half (``guidance.baselines.protocol_pairs``;
the same draw for every property). One unguided sample set at those atom counts is scored against
every property's targets (what the base model gets from the atom count alone); then each property
is sampled with guidance at each scale. A conditional base (``train.py context=[prop]``) covers its
own property: its unguided row is sampled given the targets (cEDM), its guided rows add guidance
on top (EEGSDE's setting). phi_c (the evaluator) scores everything. EDM's reference
rows (#Atoms, upper and lower bound) are computed on n held-out molecules. Prints a markdown table.
"""

import argparse
import json
import time

import numpy as np
import torch

from moldiff.data.report import InputReport
from moldiff.guidance.baselines import atoms_baseline, evaluator_bounds, expected_given_atoms
from moldiff.guidance.guided import GuidanceReport, Scale, guided
from moldiff.guidance.property_energy import PropertyEnergy
from moldiff.data.qm9 import QM9_TARGETS
from moldiff.guidance.baselines import predict, protocol_pairs
from moldiff.jobs.guide import base_eps, load_property_net
from moldiff.jobs.sample import drop_non_finite
from moldiff.metrics.evaluate import evaluate
from moldiff.nn.cpu_tuning import tune_cpu_allocator
from moldiff.sampling.generate import generate
from moldiff.sampling.samplers import with_recommended
from moldiff.model.checkpoint import checkpoint_path, property_checkpoint_path
from moldiff.model.diffusion import DiffusionModel

PUBLISHED = {  # EEGSDE (Bao et al. 2023) and conditional EDM (Hoogeboom et al. 2022), in the units of our QM9 (eV for the orbital energies)
    "EEGSDE": {"alpha": 2.50, "gap": 0.487, "homo": 0.302, "lumo": 0.447, "mu": 0.777, "Cv": 0.941},
    "cEDM": {"alpha": 2.78, "gap": 0.671, "homo": 0.371, "lumo": 0.601, "mu": 1.123, "Cv": 1.065},
}


def stability(mols, vocab) -> dict:
    m = evaluate(mols, vocab, InputReport(), protocols=("edm",), workers=2)["edm"]
    return {k: m[k] for k in ("atom_stability", "molecule_stability", "validity")}


def _g(value, factor=1.0, digits=4) -> str:
    return "n/a" if value is None else f"{factor * value:.{digits}g}"


def scored(evaluator, mols, targets, layout, device, column) -> dict:
    """phi_c's MAE over the molecules that ended finite; one that did not (the base model or a
    strong guide drove it off) is counted in ``left_out``, as guide.py does, not scored as NaN."""
    kept_mols, kept, left_out = drop_non_finite(mols, "not scored")
    mae = float(np.abs(predict(evaluator, kept_mols, layout, device, column) - targets[kept]).mean()) if len(kept_mols) else None
    return {"mae": mae, "left_out": len(left_out["indices"]) if left_out else 0}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default="shipped")
    p.add_argument("--guide", default="shipped")
    p.add_argument("--evaluator", default="shipped")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--sampler", default="ancestral")
    p.add_argument("--scales", default="1")
    p.add_argument("--clip", type=float, default=None, help="cap each step's guidance at this multiple of the unguided eps norm (moldiff.guidance.guided)")
    p.add_argument("--properties", default=",".join(QM9_TARGETS))
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--late-noise", type=float, default=None,
                   help="ancestral: scale the injected noise of the steps at t <= 0.5 by this (sample.py's default 0.5); default: EDM's exact posterior")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    a.guide, a.evaluator = str(property_checkpoint_path(a.guide, "guide")), str(property_checkpoint_path(a.evaluator, "evaluator"))
    tune_cpu_allocator()
    device = torch.device("cpu")
    module = DiffusionModel.load(checkpoint_path(a.ckpt), device)
    # a conditional base (EDM-style) is sampled given each molecule's target; it covers only its property
    conditional = module.context is not None
    props = module.context.names if conditional else a.properties.split(",")
    sizes, _ = protocol_pairs(props[0], a.n, a.seed)
    common = dict(sampler=a.sampler, steps=a.steps, batch_size=a.batch_size, seed=a.seed, device=device, sizes=sizes, progress=False)
    if a.late_noise is not None:  # the sampler's recommended late_t, with this late_noise
        common |= with_recommended(a.sampler, {"late_noise": a.late_noise})
    result = {"ckpt": a.ckpt, "base": f"conditional on {props}" if conditional else "unconditional", "guide": a.guide,
              "evaluator": a.evaluator, "n": a.n, "steps": a.steps, "clip": a.clip, "sampler": a.sampler, "seed": a.seed,
              "late_noise": a.late_noise, "properties": {}}
    if not conditional:
        t0 = time.perf_counter()
        unguided = generate(module, a.n, **common)
        result["unguided"] = {"seconds": round(time.perf_counter() - t0, 1), **stability(unguided, module.layout.vocab)}
    for prop in props:
        _, targets = protocol_pairs(prop, a.n, a.seed)
        evaluator, ecol = load_property_net(a.evaluator, device, prop, module.layout)
        guide, gcol = load_property_net(a.guide, device, prop, module.layout)
        base_row = {}
        if conditional:
            # control: the same model given only what the atom count says, E[c | N]; what it gains
            # with the true targets is what conditioning buys (not the model's other training)
            blind = generate(module, a.n, context=expected_given_atoms(prop, sizes), **common)
            t0 = time.perf_counter()
            unguided = generate(module, a.n, context=targets, **common)
            base_row = {"unguided": {"seconds": round(time.perf_counter() - t0, 1), **stability(unguided, module.layout.vocab)},
                        "context_from_atoms_mae": scored(evaluator, blind, targets, module.layout, device, ecol)["mae"]}
        plain = scored(evaluator, unguided, targets, module.layout, device, ecol)
        row = {**base_row, "unguided_mae": plain["mae"], "unguided_left_out": plain["left_out"],
               "atoms": atoms_baseline(prop, a.n, a.seed),
               **evaluator_bounds(prop, evaluator, module.layout, device, a.n, a.seed, ecol), "guided": {}}
        energy = PropertyEnergy(guide, None, name=prop, column=gcol)
        for scale in map(float, a.scales.split(",")):
            report = GuidanceReport()
            base, slot = base_eps(module, prop)
            eps_fn = guided(base, module.sde, [(energy, Scale(scale))], report, clip=a.clip)

            def before_batch(k, first, last, energy=energy, targets=targets, report=report, slot=slot):
                report.offset = first
                energy.target = torch.as_tensor(targets[first:last], dtype=torch.float32)
                if slot is not None:
                    slot.values = energy.target

            t0 = time.perf_counter()
            mols = generate(module, a.n, eps_fn=eps_fn, before_batch=before_batch, **common)
            seconds = time.perf_counter() - t0
            score = scored(evaluator, mols, targets, module.layout, device, ecol)
            mae = score["mae"]
            row["guided"][str(scale)] = {**score, "seconds": round(seconds, 1), "guidance": report.to_dict(),
                                         **stability(mols, module.layout.vocab)}
            print(f"{prop} scale {scale}: MAE {_g(mae)} ({score['left_out']} left out; unguided {_g(row['unguided_mae'])}, #Atoms {row['atoms']:.4g}, "
                  f"bounds {row['lower_bound']:.4g}..{row['upper_bound']:.4g}), {seconds:.0f} s", flush=True)
        result["properties"][prop] = row
        if a.out:  # after every property: an interrupted run keeps what it measured
            from moldiff.io.writers import atomic_write

            with atomic_write(a.out) as f:
                json.dump(result, f, indent=2)
    scales = a.scales.split(",")
    print("\n| property | unit | upper bound | #Atoms | unguided | " + " | ".join(f"guided s={s}" for s in scales)
          + " | lower bound | EEGSDE | cEDM |")
    print("|---" * (8 + len(scales)) + "|")
    for prop, row in result["properties"].items():
        unit_scale, unit = (1000.0, "meV") if prop in ("gap", "homo", "lumo") else (1.0, {"alpha": "Bohr³", "mu": "D", "Cv": "cal/mol K"}[prop])
        cells = [row["upper_bound"], row["atoms"], row["unguided_mae"]] + [row["guided"][str(float(s))]["mae"] for s in scales]
        cells += [row["lower_bound"], PUBLISHED["EEGSDE"][prop], PUBLISHED["cEDM"][prop]]
        print(f"| {prop} | {unit} | " + " | ".join(_g(c, unit_scale, 3) for c in cells) + " |")


if __name__ == "__main__":
    main()
