"""The likelihood job behind ``scripts/likelihood.py``: per-molecule NLLs of a data split under a
checkpoint (ELBO or ODE), written as CSV with a summary (mean +- standard error, nats per
molecule and bits per dimension). Finished batches survive an interruption (``.partial/``)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from moldiff.data.loader import EpochBatchSampler, MoleculeDataset
from moldiff.data.report import InputReport
from moldiff.data.sources import load_source
from moldiff.io.partial import PartialResults, run_key
from moldiff.io.writers import atomic_write
from moldiff.likelihood.elbo import elbo
from moldiff.likelihood.ode_nll import ode_nll
from moldiff.likelihood.terms import dimensions
from moldiff.model.checkpoint import checkpoint_path
from moldiff.model.diffusion import DiffusionModel

METHODS = ("elbo", "ode")


def check_config(cfg) -> None:
    if cfg.method not in METHODS:
        raise ValueError(f"method: unknown {cfg.method!r}; use one of {METHODS}")
    for key in ("n", "batch_size"):
        if int(cfg[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {cfg[key]}")
    if cfg.elbo.timesteps != "all" and int(cfg.elbo.timesteps) < 1:
        raise ValueError(f"elbo.timesteps: 'all' or a positive number, got {cfg.elbo.timesteps}")
    if int(cfg.elbo.T) < 1:
        raise ValueError(f"elbo.T must be >= 1, got {cfg.elbo.T}")
    if cfg.ode.divergence not in ("exact", "hutchinson"):
        raise ValueError(f"ode.divergence: 'exact' or 'hutchinson', got {cfg.ode.divergence!r}")
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={cfg.device} but no CUDA device is available; use device=cpu")
    checkpoint_path(cfg.ckpt)


# Seconds per molecule measured on the project's 2-core CPU (float64; docs/likelihood.md,
# benchmarks/README.md): the ELBO per timestep scored, the ODE per Hutchinson probe.
CPU_SECONDS = {"elbo_per_timestep": 0.0045, "ode_per_probe": 2.4}


def cost_estimate(cfg, n: int) -> str:
    """One line on what the job is about to do and roughly how long it takes on a 2-core CPU: the
    full T = 1000 ELBO of 1000 molecules runs ~75 min, which nothing said before."""
    if cfg.method == "elbo":
        steps = int(cfg.elbo.T) if cfg.elbo.timesteps == "all" else int(cfg.elbo.timesteps)
        seconds = n * steps * CPU_SECONDS["elbo_per_timestep"]
        what = f"ELBO of {n} molecules, {steps} network calls each"
        cheaper = " (elbo.timesteps=100: an unbiased estimate at a tenth of the cost)" if steps > 100 else ""
    elif cfg.ode.divergence == "hutchinson":
        seconds = n * int(cfg.ode.probes) * CPU_SECONDS["ode_per_probe"]
        what = f"ODE NLL of {n} molecules, {int(cfg.ode.probes)} Hutchinson probe(s) each"
        cheaper = " (ode.probes=1 halves it)" if int(cfg.ode.probes) > 1 else ""
    else:
        return f"ODE NLL of {n} molecules with the exact divergence: one backward pass per dimension, far slower than Hutchinson (hours on a CPU)"
    return f"{what}: about {_duration(seconds)} on 2 CPU cores{cheaper}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def split_spec(split: str, dataset: str) -> str:
    """A full spec (qm9:test) or a file or folder as it is; a bare name (train, valid, test) is a
    split of the checkpoint's dataset."""
    path = Path(split)
    # a missing samples.sdf or dir/ stays a path, so that the error names a missing file
    if ":" in split or path.exists() or path.suffix or len(path.parts) > 1:
        return split
    return f"{dataset}:{split}"


def load_data(spec: str, layout, n: int, seed: int, target=None):
    report = InputReport()
    mols, _, _ = load_source(spec, report)
    mols = mols.checked(layout.vocab, report)
    if report.n_rejected:
        print(f"{spec}: {report.n_rejected} molecules rejected and not scored: {report.to_dict()['rejected']}")
    index = np.sort(np.random.default_rng(seed).permutation(len(mols))[: min(n, len(mols))])
    return MoleculeDataset(mols.subset(index), layout, target), index


def score_batch(module, method: str, batch, cfg, generator) -> dict[str, np.ndarray]:
    # a conditional model scores p(molecule | its own properties)
    eps_fn = module.eps_fn(ema=bool(cfg.ema), context=None if module.context is None else batch.y.double())
    state = batch.state()
    clean = state.replace(pos=state.pos.double(), atom_type=state.atom_type.double())
    b, m = clean.batch, clean.n_mol
    net = module.network(bool(cfg.ema))
    net.double()
    try:
        if method == "elbo":
            timesteps = "all" if cfg.elbo.timesteps == "all" else int(cfg.elbo.timesteps)
            with torch.no_grad():
                out = elbo(eps_fn, module.sde, clean, T=int(cfg.elbo.T), timesteps=timesteps, layout=module.layout,
                           histogram=module.size_histogram, generator=generator, horizon=module.horizon)
        else:
            o = cfg.ode
            out = ode_nll(eps_fn, module.sde, clean, layout=module.layout, histogram=module.size_histogram, divergence=o.divergence,
                          probes=int(o.probes), t0=float(o.t0), rtol=float(o.rtol), atol=float(o.atol), generator=generator,
                          dequantization=str(o.dequantization), t1=module.horizon)
    finally:
        net.float()
    out["dims"] = dimensions(b, m, clean.atom_type.shape[1])
    out["n_atoms"] = torch.bincount(b, minlength=m)
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


def summarize(values: np.ndarray, dims: np.ndarray, estimator_se: np.ndarray | None = None) -> dict:
    """Mean and standard error over the molecules' values. Each value is an independent
    unbiased estimate (the ELBO's K steps and the ODE's probes are drawn per molecule), so
    ``nats_se`` covers the estimator too. ``estimator_se`` (per molecule, optional): the part of
    it due to the estimator, sqrt(sum se_i^2) / n."""
    finite = np.isfinite(values)
    v = values[finite]
    bpd = (v / (dims[finite] * math.log(2)))
    se = lambda a: float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")  # noqa: E731
    out = {"nats_per_molecule": float(v.mean()), "nats_se": se(v), "bits_per_dim": float(bpd.mean()), "bits_per_dim_se": se(bpd),
           "n": int(len(v)), "n_nonfinite": int((~finite).sum())}
    if estimator_se is not None:
        out["estimator_se"] = float(np.sqrt(np.square(estimator_se[finite]).sum()) / max(len(v), 1))
    return out


def run_likelihood(cfg, output_dir) -> dict:
    check_config(cfg)
    out = Path(cfg.output) if cfg.output else Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(cfg.ckpt)
    device = torch.device(cfg.device)
    module = DiffusionModel.load(path, device)
    spec = split_spec(str(cfg.split), module.config["dataset"])
    ds, index = load_data(spec, module.layout, int(cfg.n), int(cfg.seed), module.context.names if module.context else None)
    batches = list(EpochBatchSampler(len(ds), int(cfg.batch_size), shuffle=False, drop_last=False))
    key = run_key(str(path.resolve()), path.stat().st_size, spec, cfg.n, cfg.seed, cfg.method, json.dumps(OmegaConf.to_container(cfg[cfg.method])),
                  cfg.batch_size, cfg.ema)
    partial = PartialResults(out / f".partial_{cfg.method}", key)
    done = set(partial.finished())
    print(cost_estimate(cfg, len(ds)) + (f"; {len(done)} of {len(batches)} batches already done" if done else ""), flush=True)
    t0 = time.perf_counter()
    with tqdm(total=len(ds), unit="mol", desc=f"{cfg.method} NLL") as bar:
        for k, idx in enumerate(batches):
            if k not in done:
                g = torch.Generator(device=device).manual_seed(int(cfg.seed) * 100_003 + k)
                partial.save_arrays(k, **score_batch(module, cfg.method, ds[idx].to(device), cfg, g))
            bar.update(len(idx))
    seconds = time.perf_counter() - t0
    parts = [partial.load_arrays(k) for k in range(len(batches))]
    cols = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    cols["bits_per_dim"] = cols["nll"] / (cols["dims"] * math.log(2))
    names = ["nll", "bits_per_dim", "n_atoms", "dims"] + sorted(c for c in cols if c not in ("nll", "bits_per_dim", "n_atoms", "dims"))
    with atomic_write(out / f"nll_{cfg.method}.csv") as f:
        f.write("dataset_index," + ",".join(names) + "\n")
        for r in range(len(index)):
            f.write(f"{int(index[r])}," + ",".join(f"{float(cols[c][r]):.6g}" for c in names) + "\n")
    summary = {"method": cfg.method, "source": spec, "checkpoint": str(path), **summarize(cols["nll"], cols["dims"], cols.get("nll_se")),
               "seconds": round(seconds, 1), "seconds_per_molecule": round(seconds / len(ds), 4),
               "settings": OmegaConf.to_container(cfg[cfg.method])}
    for term in ("prior", "diffusion", "reconstruction", "log_pN", "ode_nll", "nll_se"):
        if term in cols:
            summary[f"mean_{term}"] = float(np.mean(cols[term]))
    with atomic_write(out / f"summary_{cfg.method}.json") as f:
        json.dump(summary, f, indent=2)
    partial.clear()
    share = f" (estimator's share of it {summary['estimator_se']:.2f})" if "estimator_se" in summary else ""
    print(f"{cfg.method}: {summary['nats_per_molecule']:.2f} +- {summary['nats_se']:.2f}{share} nats/molecule, "
          f"{summary['bits_per_dim']:.3f} +- {summary['bits_per_dim_se']:.3f} bits/dim over {summary['n']} molecules ({seconds:.0f} s)")
    return summary
