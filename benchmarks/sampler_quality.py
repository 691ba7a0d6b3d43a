"""Quality against cost: sample with several samplers and step counts from one checkpoint and
evaluate each set under both protocols (CPU; run on an idle machine).

python benchmarks/sampler_quality.py [--ckpt shipped] [--n 1000] [--runs ancestral:1000,ancestral:100,ode_dpm2:25]
                                     [--batch-size 500] [--seed 0] [--t-max T] [--distances]
                                     [--precision 32|bf16-mixed] [--out results.json]

Each run is sampler:steps[:key=value;...] with sampler options, e.g.
karras:50:churn=30;s_tmin=0.05;s_tmax=50 or ancestral:100:late_noise=0.5;late_t=0.05;grid=karras. Network
evaluations: steps for ancestral / euler_maruyama, 2 x steps for ode_heun, ode_dpm2 and karras,
(1 + corrector_steps) x steps for pc. ``--t-max`` starts sampling there instead of at the model's
horizon (1, or a bridge-refined model's); ``--distances`` adds the distribution distances against
10,000 QM9 training molecules; ``--precision bf16-mixed`` runs the network in bfloat16. Prints a markdown table.
"""

import argparse
import json
import time

import torch

from moldiff.data.report import InputReport
from moldiff.metrics.evaluate import evaluate
from moldiff.nn.cpu_tuning import tune_cpu_allocator
from moldiff.sampling.generate import generate
from moldiff.model.checkpoint import checkpoint_path
from moldiff.model.diffusion import DiffusionModel

NFE_PER_STEP = {"ancestral": 1, "euler_maruyama": 1, "pc": 2, "ode_heun": 2, "ode_dpm2": 2, "karras": 2}


def parse_run(run: str):
    """sampler:steps[:key=value;key=value] -> (sampler, steps, options) (``parse_options``)."""
    parts = run.split(":")
    return parts[0], int(parts[1]), parse_options(parts[2] if len(parts) > 2 else "")


def parse_options(text: str) -> dict:
    """"key=value;key=value" -> {key: value}, numbers as floats, anything else as text (e.g.
    grid=karras); empty: no options."""
    def value(v: str):
        try:
            return float(v)
        except ValueError:
            return v

    return {k: value(v) for k, v in (kv.split("=") for kv in text.split(";") if kv)}


def quality(module, sampler, steps, n, seed, batch_size=500, reference=None, precision="32", options=None) -> dict:
    """Sample n molecules and evaluate them under both protocols (and the distances, given a reference)."""
    options = options or {}
    t0 = time.perf_counter()
    mols = generate(module, n, sampler=sampler, steps=steps, batch_size=batch_size, seed=seed, progress=False, precision=precision, **options)
    seconds = time.perf_counter() - t0
    m = evaluate(mols, module.layout.vocab, InputReport(), reference=reference, protocols=("edm", "corrected"), workers=2)
    keys = ("atom_stability", "molecule_stability", "validity", "valid_and_unique")
    return {"sampler": sampler, "options": options, "precision": precision, "steps": int(steps), "seed": seed,
            "nfe": int(steps) * NFE_PER_STEP.get(sampler, 1), "seconds": round(seconds, 1),
            "edm": {k: m["edm"][k] for k in keys}, "corrected": {k: m["corrected"][k] for k in keys}, "distances": m.get("distribution")}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default="shipped")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--runs", default="ancestral:100,ancestral:50,ode_dpm2:50,ode_dpm2:25")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--t-max", type=float, default=None)
    p.add_argument("--distances", action="store_true")
    p.add_argument("--precision", choices=["32", "bf16-mixed"], default="32")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    tune_cpu_allocator()
    module = DiffusionModel.load(checkpoint_path(a.ckpt), torch.device("cpu"))
    reference = None
    if a.distances:
        from moldiff.metrics.reference import reference_stats

        reference = reference_stats("qm9:train", 10_000)
    options = {} if a.t_max is None else {"t_max": a.t_max}
    rows = []
    for run in a.runs.split(","):
        sampler, steps, extra = parse_run(run)
        row = quality(module, sampler, steps, a.n, a.seed, a.batch_size, reference, a.precision, {**options, **extra})
        rows.append(row)
        e, c = row["edm"], row["corrected"]
        dist = ""
        if row["distances"]:
            d = row["distances"]
            dist = f" {d['atom_type_tv']:.3f} / {_fmt(d['bond_length_w1']['weighted_mean'], 3)} / {_fmt(d['bond_angle_w1']['weighted_mean'], 2)} |"
        print(f"| {run} | {steps} | {row['nfe']} | {row['seconds']:.0f} | "
              + " / ".join(f"{100 * e[k]:.1f}" for k in e) + " | " + " / ".join(f"{100 * c[k]:.1f}" for k in c) + " |" + dist, flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"ckpt": a.ckpt, "n": a.n, "seed": a.seed, "t_max": a.t_max or module.horizon, "rows": rows}, f, indent=2)



def _fmt(value, digits: int) -> str:
    """n/a for an undefined figure (no bond type shared with the reference)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
