"""How much noise the ancestral sampler's last steps should inject: one shared head, many tails.

python benchmarks/late_noise_sweep.py [--ckpt shipped] [--n 1000] [--seed 0] [--steps 300] [--split 0.2]
                                      [--variants "1:0,0.5:0.1,0:0.1,0.5:0.2,0:0.2"] [--out FILE.json]

Each molecule's trajectory runs once with EDM's exact posterior from t = 1 down to ``--split``;
from there each variant ``late_noise:late_t`` continues it with the same random stream (the
generator's state is copied), so the variants differ only in how the last steps' noise is scaled.
Batches, sizes and seeds are ``generate``'s (batch size 500), so variant ``1:0`` is exactly the
exact-posterior sampling of ``campaign_leg.py`` and ``0.5:0.5`` exactly ``sample.py``'s default,
at a fraction of the cost of sampling each from scratch (the tails cost in proportion to the steps
after the split; ``--split 1`` leaves no shared head).
Evaluated under both protocols. Why: the invalid molecules miss EDM's bond thresholds by a few
picometres (``failure_modes.py``, docs/history.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from moldiff.data.molecules import MoleculeSet
from moldiff.data.report import InputReport
from moldiff.metrics.evaluate import evaluate
from moldiff.model.diffusion import DiffusionModel
from moldiff.nn.cpu_tuning import tune_cpu_allocator
from moldiff.sampling.ancestral import ancestral_step
from moldiff.sampling.base import denoise, sample_sizes, sizes_to_batch, time_grid, walk

BATCH = 500  # generate()'s batching in campaign_leg.py / sample.py, so the seeds line up


@torch.no_grad()
def sweep(module, n: int, seed: int, steps: int, split: float, variants: list[tuple[float, float]]) -> dict:
    sde, layout = module.sde, module.layout
    eps = module.eps_fn()
    sizes = sample_sizes(module.size_histogram, n, torch.Generator().manual_seed(seed))
    grid = time_grid(steps, 1e-3, float(getattr(module, "horizon", 1.0)))
    k = int((grid > split).sum())  # the head walks grid[:k + 1]; every variant's late_t <= split
    parts = {v: [] for v in variants}
    for b, chunk in enumerate(torch.split(sizes, BATCH)):
        g = torch.Generator().manual_seed(int(seed) * 100_003 + b)
        batch, m = sizes_to_batch(chunk)
        head = walk(ancestral_step, eps, sde, sde.prior(batch, m, layout.dim, torch.float32, g), grid[: k + 1], g)
        rng = g.get_state()
        offsets = np.concatenate([[0], np.cumsum(chunk.numpy())])
        for late_noise, late_t in variants:
            g.set_state(rng)
            tail = walk(ancestral_step, eps, sde, head, grid[k:], g, late_noise=late_noise, late_t=late_t)
            out = denoise(eps, sde, tail, grid[-1])
            parts[(late_noise, late_t)].append(MoleculeSet(layout.decode_numbers(out.atom_type), out.pos.float().numpy(), offsets))
    out, keys = {}, ("atom_stability", "molecule_stability", "validity")
    for v, ps in parts.items():
        mols = MoleculeSet.concatenate(ps)
        m = evaluate(mols, layout.vocab, InputReport(), reference=None, protocols=("edm", "corrected"), workers=1)
        out[f"{v[0]:g}:{v[1]:g}"] = {"edm": {k_: m["edm"][k_] for k_ in keys}, "corrected": {k_: m["corrected"][k_] for k_ in keys}}
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default="shipped")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--split", type=float, default=0.2)
    p.add_argument("--variants", default="1:0,0.5:0.1,0:0.1,0.5:0.2,0:0.2")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    variants = [tuple(float(x) for x in v.split(":")) for v in a.variants.split(",")]
    if any(t > a.split for _, t in variants):
        raise SystemExit(f"error: every late_t must be <= --split {a.split}")
    tune_cpu_allocator()
    module = DiffusionModel.load(a.ckpt, torch.device("cpu"))
    t0 = time.perf_counter()
    rows = sweep(module, a.n, a.seed, a.steps, a.split, variants)
    print("| late_noise : late_t | EDM atom / mol. stab. / valid % | corrected mol. stab. / valid % |\n|---|---|---|")
    for v, r in rows.items():
        e, c = r["edm"], r["corrected"]
        print(f"| {v} | {100 * e['atom_stability']:.1f} / {100 * e['molecule_stability']:.1f} / {100 * e['validity']:.1f} | "
              f"{100 * c['molecule_stability']:.1f} / {100 * c['validity']:.1f} |")
    result = {"command": f"python benchmarks/late_noise_sweep.py --ckpt {a.ckpt} --n {a.n} --seed {a.seed} --steps {a.steps} "
                         f"--split {a.split} --variants {a.variants}", "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
