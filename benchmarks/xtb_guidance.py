"""Does GFN2-xTB guidance lower strain? Unguided against xTB-guided sampling, same seeds (CPU, tblite).

python benchmarks/xtb_guidance.py [--ckpt shipped] [--n 500] [--steps 100] [--scales 0,1] [--clips none,1]
                                  [--t-max 0.1] [--relax-steps 50] [--workers 2] [--out results.json]

``--clips`` gives each arm its cap (``guided(..., clip=)``, guide.py's ``clip``; one value: every arm),
so ``--scales 0,10,10 --clips none,none,1`` measures what guide.py's default cap does to xTB guidance.
Scale 0 is unguided sampling (bit-identical to ``sample.py`` with the same seed, sampler and steps).
Each molecule's strain is E_xTB(sampled) - E_xTB(after a short BFGS relaxation), kcal/mol
(``metrics.xtb_energy``); molecules xTB cannot evaluate are counted, not dropped silently. The
median is taken over all molecules xTB evaluated and over the EDM-valid ones; validity is EDM's.
A guided arm is also compared molecule by molecule with the unguided one (the same seeds give the
same starting noise): difference of medians with a bootstrap 95 % interval, share of molecules lowered.
"""

import argparse
import json
import math
import time

import numpy as np
import torch

from moldiff.guidance.guided import GuidanceReport, Scale, guided
from moldiff.guidance.xtb_energy import XTBEnergy
from moldiff.metrics.protocols import run_edm
from moldiff.metrics.xtb_energy import strain_energies, xtb_pool
from moldiff.nn.cpu_tuning import tune_cpu_allocator
from moldiff.sampling.generate import generate
from moldiff.model.checkpoint import checkpoint_path
from moldiff.model.diffusion import DiffusionModel


def _strain(args):
    numbers, positions, steps = args
    r = strain_energies([(numbers, positions)], steps=steps)
    return r["strain_kcal_mol"][0], (r["failures"][0][1] if r["failures"] else None)


def paired(base: np.ndarray, other: np.ndarray, seed: int, draws: int = 2000) -> dict:
    """Same seeds, so molecule i of both arms starts from the same noise and atom count: the
    difference of medians with a bootstrap 95 % interval (molecules resampled jointly), on the
    molecules xTB evaluated in both arms."""
    ok = ~np.isnan(base) & ~np.isnan(other)
    b, o = base[ok], other[ok]
    idx = np.random.default_rng(seed).integers(0, len(b), size=(draws, len(b)))
    diffs = np.median(o[idx], axis=1) - np.median(b[idx], axis=1)
    return {"n_pairs": int(ok.sum()), "median_difference": float(np.median(o) - np.median(b)),
            "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))], "fraction_lower": float((o < b).mean())}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default="shipped")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--sampler", default="ancestral")
    p.add_argument("--scales", default="0,1")
    p.add_argument("--clips", default="none", help="per arm (or one for all): none or a multiple of the unguided eps norm")
    p.add_argument("--t-max", type=float, default=0.1)
    p.add_argument("--relax-steps", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    tune_cpu_allocator()
    module = DiffusionModel.load(checkpoint_path(a.ckpt), torch.device("cpu"))
    scales = [float(s) for s in a.scales.split(",")]
    clips = [None if c.strip().lower() == "none" else float(c) for c in a.clips.split(",")]
    if len(clips) == 1:
        clips = clips * len(scales)
    if len(clips) != len(scales):
        p.error(f"--clips has {len(clips)} values for {len(scales)} scales")
    rows = []
    for scale, clip in zip(scales, clips):
        report = GuidanceReport()
        eps_fn, energy = module.eps_fn(), None
        if scale > 0:
            energy = XTBEnergy(module.sde, module.layout, a.workers)
            eps_fn = guided(eps_fn, module.sde, [(energy, Scale(scale, 0.0, a.t_max))], report, clip=clip)

        def before_batch(k, first, last, report=report):
            report.offset = first

        t0 = time.perf_counter()
        mols = generate(module, a.n, sampler=a.sampler, steps=a.steps, batch_size=a.batch_size, seed=a.seed, eps_fn=eps_fn,
                        before_batch=before_batch, progress=False)
        seconds = time.perf_counter() - t0
        if energy is not None:
            energy.close()
        valid = np.array([s is not None for s in run_edm(mols, module.layout.vocab).smiles])
        t0 = time.perf_counter()
        with xtb_pool(a.workers) as pool:
            out = list(pool.map(_strain, [(mols[i][0], mols[i][1], a.relax_steps) for i in range(len(mols))], chunksize=8))
        strain = np.array([s for s, _ in out])
        failures = {}
        for _, reason in out:
            if reason:
                key = reason.split(":")[0]
                failures[key] = failures.get(key, 0) + 1
        ok = ~np.isnan(strain)
        row = {"scale": scale, "clip": clip, "t_max": a.t_max, "validity": float(valid.mean()), "sampling_seconds": round(seconds, 1),
               "strain_seconds": round(time.perf_counter() - t0, 1), "median_strain": float(np.median(strain[ok])) if ok.any() else math.nan,
               "median_strain_valid": float(np.median(strain[ok & valid])) if (ok & valid).any() else math.nan,
               "mean_strain": float(strain[ok].mean()) if ok.any() else math.nan,
               "n_evaluated": int(ok.sum()), "n_failed": int((~ok).sum()), "failures": failures, "guidance": report.to_dict(),
               "strain": [None if np.isnan(v) else round(float(v), 3) for v in strain], "valid": valid.tolist()}
        if rows and rows[0]["scale"] == 0:
            row["against_unguided"] = paired(np.array([np.nan if v is None else v for v in rows[0]["strain"]]), strain, a.seed)
        rows.append(row)
        cmp = row.get("against_unguided")
        versus = f"{cmp['median_difference']:+.1f} [{cmp['ci95'][0]:+.1f}, {cmp['ci95'][1]:+.1f}], {100 * cmp['fraction_lower']:.0f} % lower" if cmp else ""
        print(f"| {scale:g} | {clip} | {100 * row['validity']:.1f} | {row['median_strain']:.1f} | {row['median_strain_valid']:.1f} | "
              f"{row['n_evaluated']}/{a.n} | {seconds:.0f} | {versus} |", flush=True)
        if a.out:
            from moldiff.io.writers import atomic_write

            with atomic_write(a.out) as f:
                json.dump({"ckpt": a.ckpt, "n": a.n, "steps": a.steps, "sampler": a.sampler, "seed": a.seed, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
