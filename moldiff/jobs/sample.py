"""The sampling job behind ``scripts/sample.py``: load a checkpoint (the shipped one by default),
sample, write ``samples.sdf`` and ``samples_valid.sdf`` (``moldiff.io.sample_sdf``), ``samples.xyz``,
``samples.png`` and ``metrics.json``.

``metrics.json`` is computed by the evaluation job on the written ``samples.sdf`` itself, so it is
exactly what ``scripts/evaluate.py input=samples.sdf`` reports. Finished batches are kept in
``.partial/`` until the end: rerunning an interrupted command resumes where it stopped.
"""

from __future__ import annotations

import inspect

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from moldiff.chem import relax as RX
from moldiff.data.loader import checked_batch_bounds
from moldiff.data.molecules import MoleculeSet
from moldiff.data.report import InputReport
from moldiff.io.depict import write_grid_png
from moldiff.jobs.cli import require_package
from moldiff.io.partial import PartialResults, run_key
from moldiff.io.sample_sdf import write_sample_sdfs
from moldiff.io.writers import write_sdf, write_xyz
from moldiff.jobs.evaluate import check_config as check_evaluation
from moldiff.jobs.evaluate import run_evaluation, write_json
from moldiff.model.build import plain as _plain
from moldiff.model.checkpoint import checkpoint_path
from moldiff.data.fragment import fragment_anchors, load_fragment, parse_n_atoms
from moldiff.model.bond_model import BondDiffusionModel
from moldiff.model.load import load_model, model_vocabulary
from moldiff.sampling.inpaint import RECONSTRUCTION, check_fragment
from moldiff.nn.cpu_tuning import tune_once
from moldiff.sampling.generate import PRECISIONS, generate
from moldiff.sampling.samplers import SAMPLERS, with_recommended


def resolve_sizes(sizes, n: int):
    """None (the model's histogram), one atom count for all, or a list of n counts."""
    if sizes is None:
        return None
    if isinstance(sizes, int) or (isinstance(sizes, str) and sizes.isdigit()):
        sizes = [int(sizes)] * n
    sizes = [int(s) for s in sizes]
    if len(sizes) != n or min(sizes) < 1:
        raise ValueError(f"sizes: give one positive atom count or a list of n={n} of them")
    return sizes


def resolve_targets(target, module, n: int):
    """A conditional model's targets, one value per conditioning property (the same for all n
    molecules): (n, K); None for an unconditional model."""
    context = getattr(module, "context", None)
    if context is None:
        if target is not None:
            raise ValueError("target: this model is unconditional (train one with context=[...] to condition on properties)")
        return None
    if target is None:
        raise ValueError(f"target: this model is conditional on {context.names}; give target=<value> (a list for several)")
    values = [float(v) for v in (target if isinstance(target, (list, tuple)) else [target])]
    if len(values) != len(context.names):
        raise ValueError(f"target: {len(values)} values for the model's {len(context.names)} properties {context.names}")
    return torch.tensor(values, dtype=torch.float32).expand(n, -1)


# The shipped model on the project's 2-core CPU: n=1000, 300 ancestral steps in 289 s
# (benchmarks/README.md), i.e. seconds per molecule and network call; the samplers' calls per step
SHIPPED_CPU_SECONDS = 289 / (1000 * 300)
CALLS_PER_STEP = {"ancestral": 1, "euler_maruyama": 1, "ode_heun": 2, "ode_dpm2": 2}


DEFAULT_STEPS = {"gaussian": 300, "bonds": 100}  # steps=null: the model's own default


def steps_of(cfg, module) -> int:
    """``steps``, or the model's default when null: 300 for the Gaussian model, 100 for the bond model."""
    return int(cfg.steps) if cfg.steps is not None else DEFAULT_STEPS["bonds" if isinstance(module, BondDiffusionModel) else "gaussian"]


def announce(cfg, n: int, done: int, device, steps: int | None = None) -> str:
    """What the job is about to sample and, for the shipped model on a CPU, roughly how long it takes."""
    if steps is None:
        steps = int(cfg.steps) if cfg.steps is not None else DEFAULT_STEPS["gaussian"]
    line = f"sampling {n} molecules ({cfg.sampler}, {steps} steps, {device})" + (f", {done} batches already done" if done else "")
    if cfg.get("fragment"):
        line += f", around the fragment {cfg.fragment}"
    calls = CALLS_PER_STEP.get(str(cfg.sampler))
    if str(cfg.ckpt) == "shipped" and torch.device(device).type == "cpu" and calls and not done:
        seconds = n * steps * calls * SHIPPED_CPU_SECONDS
        line += f": ~{seconds:.0f} s" if seconds < 90 else f": ~{seconds / 60:.0f} min"
        line += " on 2 CPU cores"
    return line


def check_config(cfg) -> None:
    if int(cfg.n) < 1:
        raise ValueError(f"n must be >= 1, got {cfg.n}")
    if cfg.steps is not None and int(cfg.steps) < 1:
        raise ValueError(f"steps must be >= 1 (or null: the model's default), got {cfg.steps}")
    if int(cfg.batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    batch_bounds(cfg)
    check_options(cfg)
    check_relax(cfg.get("relax"))
    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"sampler: unknown {cfg.sampler!r}; use one of {sorted(SAMPLERS)}")
    if str(cfg.get("precision", "32")) not in PRECISIONS:
        raise ValueError(f"precision: use one of {list(PRECISIONS)}, got {cfg.precision!r}")
    torch.device(cfg.device)  # a malformed device string fails here
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={cfg.device} but no CUDA device is available; use device=cpu")
    resolve_sizes(_plain(cfg.sizes), int(cfg.n))
    parse_n_atoms(cfg.get("n_atoms"))
    if cfg.get("n_atoms") is not None and cfg.sizes is not None:
        raise ValueError("give sizes or n_atoms, not both")
    checkpoint_path(cfg.ckpt)
    if cfg.evaluation is not None:
        check_evaluation(_evaluation_cfg(cfg, "x.sdf", "metrics.json"))


def check_relax(relax) -> None:
    """``relax``: null, mmff or xtb (which needs tblite and ASE, checked before sampling)."""
    if relax is None:
        return
    if str(relax) not in RX.METHODS:
        raise ValueError(f"relax: use one of {list(RX.METHODS)} (or null), got {relax!r}")
    if str(relax) == "xtb":
        require_package("tblite", "relax=xtb")
        require_package("ase", "relax=xtb")


def check_options(cfg) -> dict:
    """``options``, the sampler's own settings: a key that is one of the job's settings fails (the guidance job
    uses this too)."""
    options = _plain(cfg.options) or {}
    clash = sorted(set(options) & set(inspect.signature(generate).parameters))
    if clash:
        raise ValueError(f"options: {clash} are the job's own settings, not sampler options; give them as top-level {clash[0]}=...")
    return options


def batch_bounds(cfg) -> dict:
    """``batch_atoms`` / ``batch_edges`` for ``generate``, checked (the training job uses the same check)."""
    return checked_batch_bounds(cfg.get("batch_atoms"), cfg.get("batch_edges"))


def _evaluation_cfg(cfg, sdf, out):
    ev = dict(_plain(cfg.evaluation))
    return OmegaConf.create({**ev, "input": str(sdf), "output": str(out)})


def _key(cfg, path: Path) -> str:
    """Identifies the molecules a run will produce: a partial run is resumed only under the same key."""
    stat = path.stat()
    return run_key(str(path.resolve()), stat.st_size, int(stat.st_mtime), cfg.n, cfg.sampler, cfg.steps, cfg.seed, cfg.batch_size,
                   json.dumps(_plain(cfg.sizes)), json.dumps(sampler_options(cfg), sort_keys=True), cfg.ema,
                   json.dumps(_plain(cfg.get("target"))), str(cfg.get("precision", "32")),
                   # bounds cut the molecules into other batches (other seeds); only when set, so a
                   # run interrupted before they existed still resumes
                   *([json.dumps(bounds, sort_keys=True)] if (bounds := batch_bounds(cfg)) else []),
                   # likewise a fragment and n_atoms, only when given
                   *([json.dumps([str(cfg.fragment), _fragment_stamp(cfg.fragment), str(cfg.get("n_atoms")), int(cfg.get("resample", 1)),
                                _reconstruction(cfg) if _reconstruction(cfg) is not None else RECONSTRUCTION])]
                     if cfg.get("fragment") or cfg.get("n_atoms") is not None else []))


def _reconstruction(cfg) -> float | None:
    """``reconstruction=``: a weight, or None for the model's default (2 with replacement, none for a
    model trained with fragments)."""
    value = cfg.get("reconstruction")
    return None if value is None else float(value)


def _fragment_stamp(fragment) -> list:
    """Size and modification time of the fragment file: an edited fragment is another run."""
    if not fragment:
        return []
    stat = Path(fragment).stat()
    return [stat.st_size, int(stat.st_mtime)]


def run_sampling(cfg, output_dir: str | Path) -> dict:
    check_config(cfg)
    out = Path(cfg.output) if cfg.output else Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(cfg.ckpt)
    device = torch.device(cfg.device)
    if device.type == "cpu":
        tune_once()
    module = load_model(path, device)
    n = int(cfg.n)
    fragment = check_fragment_input(cfg, module, n)
    steps = steps_of(cfg, module)

    partial = PartialResults(out / ".partial", _key(cfg, path))
    done = {k: MoleculeSet.load(partial.path(k)) for k in partial.finished()}
    if done:
        print(f"resuming: {len(done)} finished batches in {partial.folder}")

    print(announce(cfg, n, len(done), device, steps), flush=True)
    t0 = time.perf_counter()
    mols = _generate(module, cfg, n, device, done, partial, steps, fragment)
    seconds = time.perf_counter() - t0
    print(f"sampled {n} molecules in {seconds:.1f} s ({cfg.sampler}, {steps} steps, {device})")
    mols, kept, left_out = drop_non_finite(mols, "not written, not in the metrics")
    names = [f"sample_{k}" for k in kept]
    records = write_files(mols, module, out, names)
    if cfg.get("relax"):  # before the partial batches go: an interrupted relaxation resumes without sampling again
        write_relaxed(records, out, names, str(cfg.relax))
    partial.clear()  # the molecules are on disk: an evaluation error below loses nothing
    result = evaluate_outputs(out, cfg)
    if result and left_out:
        result["left_out"] = {"n": len(left_out["indices"]), **left_out}
        write_json(out / "metrics.json", result)
    return result


def drop_non_finite(mols: MoleculeSet, fate: str):
    """(finite molecules, their indices, ``left_out`` or None). A molecule the model ended
    non-finite (e.g. far outside its training sizes) has no coordinates to write: it is counted
    and left out, never written as -nan; ``fate`` says what that means for the job."""
    lost = InputReport()
    kept_mols, kept = mols.checked(None, lost, return_index=True)
    if not lost.n_rejected:
        return kept_mols, kept, None
    print(f"left out {lost.n_rejected} of {len(mols)} molecules ({', '.join(f'{k}={v}' for k, v in lost.rejected.items())}): {fate}")
    return kept_mols, kept, {"indices": np.setdiff1d(np.arange(len(mols)), kept).tolist(), "reasons": dict(lost.rejected)}


def check_fragment_input(cfg, module, n: int):
    """The fragment (``fragment=``), checked against the model before anything is sampled or
    written: one line and exit status 2 for each bad input (moldiff/data/fragment.py); None without one."""
    if not cfg.get("fragment"):
        return None
    fragment = load_fragment(cfg.fragment, model_vocabulary(module))
    anchors = _plain(cfg.get("anchors", "auto"))
    if isinstance(module, BondDiffusionModel):
        module.fragment_fields(fragment)  # bonds and charges the bond model can keep
        fragment_anchors(fragment, anchors)
    elif anchors != "auto":
        raise ValueError(f"anchors={anchors}: only the bond model makes bonds to a fragment (ckpt=qm9-bonds); this model takes none")
    resample, reconstruction = int(cfg.get("resample", 1)), _reconstruction(cfg)
    if isinstance(module, BondDiffusionModel):
        reconstruction = module.reconstruction_for(True, resample, reconstruction)
    check_fragment(fragment, str(cfg.sampler), resample=resample,
                   reconstruction=RECONSTRUCTION if reconstruction is None else reconstruction)
    k = len(fragment.numbers)
    limits = parse_n_atoms(cfg.get("n_atoms"))
    if limits is not None and k > limits[0]:
        raise ValueError(f"n_atoms={cfg.n_atoms}: the fragment {cfg.fragment} has {k} atoms, more than {limits[0]}")
    return fragment


def _generate(module, cfg, n, device, done, partial, steps: int, fragment=None):
    def save(k, part):
        part.save(partial.path(k))  # atomic

    common = dict(steps=steps, batch_size=int(cfg.batch_size), seed=int(cfg.seed), sizes=resolve_sizes(_plain(cfg.sizes), n),
                  fragment=fragment, n_atoms=cfg.get("n_atoms"), on_batch=save, done=done, resample=int(cfg.get("resample", 1)),
                  reconstruction=_reconstruction(cfg))
    if isinstance(module, BondDiffusionModel):  # its own sampler (categorical fields), same batching and resume
        return module.sample(n, sampler=cfg.sampler, ema=bool(cfg.ema), anchors=_plain(cfg.get("anchors", "auto")), **common,
                             **_plain(cfg.options or {}))
    return generate(
        module, n, sampler=cfg.sampler, device=device, ema=bool(cfg.ema), progress=sys.stderr.isatty(),
        context=resolve_targets(_plain(cfg.get("target")), module, n), precision=str(cfg.get("precision", "32")),
        **common, **batch_bounds(cfg), **sampler_options(cfg),
    )


def sampler_options(cfg) -> dict:
    """``options`` on top of the sampler's recommended ones (ancestral: ``late_noise=1`` for EDM's exact posterior)."""
    return with_recommended(cfg.sampler, _plain(cfg.options))


def write_files(mols: MoleculeSet, module, out: Path, names: list[str]):
    """The sample files; returns what ``samples.sdf`` holds (``SampleRecords``)."""
    write_xyz(out / "samples.xyz", mols, names)
    records = write_sample_sdfs(out, mols, model_vocabulary(module), names)
    fixed = None if mols.fixed is None else [np.flatnonzero(mols.fixed[a:b]).tolist() for a, b in zip(mols.offsets[:-1], mols.offsets[1:])]
    write_grid_png(out / "samples.png", records.mols, highlight=fixed)  # a fragment's kept atoms highlighted
    n_valid = sum(mol is not None for mol in records.valid)
    print(f"wrote {out / 'samples.sdf'}, {out / 'samples_valid.sdf'} ({n_valid} of {len(mols)} molecules: corrected-valid), "
          f"{out / 'samples.xyz'}, {out / 'samples.png'}")
    return records


def relaxed_paths(out: Path, method: str) -> tuple[Path, Path]:
    """The relaxed molecules' SDF and their figures, named by the method: never mistaken for raw samples."""
    return out / f"samples_relaxed_{method}.sdf", out / f"relax_{method}.json"


def write_relaxed(records, out: Path, names: list[str], method: str) -> dict:
    """``relax=mmff|xtb``: each record of ``samples.sdf`` that is a molecule, relaxed with its own
    bonds, into ``samples_relaxed_<method>.sdf`` (same names; SDF properties ``relaxed``,
    ``relax_converged``, energies in kcal/mol, RMSD); what was not relaxed, and why, in
    ``relax_<method>.json``. The raw files and metrics.json are not touched."""
    sdf, report_json = relaxed_paths(out, method)
    done, report = RX.relax_molecules(records.mols, [p["bonds"] for p in records.properties], method, names)
    props = [{"relaxed": method, "relax_converged": int(r.converged), "energy_before_kcal_mol": f"{r.energy_before:.4f}",
              "energy_after_kcal_mol": f"{r.energy_after:.4f}", "rmsd_A": f"{r.rmsd:.4f}"} for _, r in done]
    write_sdf(sdf, [r.mol for _, r in done], [names[k] for k, _ in done], props)
    result = {**RX.summary(method, len(records.mols), done, report), "file": sdf.name}
    write_json(report_json, result)
    left = ", ".join(f"{k}={v}" for k, v in report.rejected.items()) or "none"
    print(f"wrote {sdf} ({RX.LABEL[method]}): {len(done)} of {len(records.mols)} molecules relaxed, {result['converged']} "
          f"converged; not relaxed: {left}; {report_json}")
    return result


def evaluate_outputs(out: Path, cfg) -> dict:
    """The evaluation job on the written ``samples.sdf`` (``metrics.json``); {} with evaluation=null."""
    if cfg.evaluation is None:
        return {}
    return run_evaluation(_evaluation_cfg(cfg, out / "samples.sdf", out / "metrics.json"), out)


def write_outputs(mols: MoleculeSet, module, out: Path, cfg) -> dict:
    """Files and, unless evaluation=null, metrics for molecules made by another job (guidance)."""
    write_files(mols, module, out, [f"sample_{k}" for k in range(len(mols))])
    return evaluate_outputs(out, cfg)
