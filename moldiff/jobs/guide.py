"""The job behind ``scripts/guide.py``: energy-guided sampling from a diffusion checkpoint.

* ``mode=design``: n molecules guided towards ``target`` for ``property`` (and/or xTB).
* ``mode=protocol``: EEGSDE/EDM's protocol: (atom count, target) pairs drawn jointly from the
  held-out half of QM9 train (the half the guide and evaluator never saw), one molecule each;
  the evaluator phi_c scores the samples and the MAE to the targets is reported.

Writes ``samples.sdf``/``samples.xyz``, ``guidance.json`` (targets, evaluator predictions, MAE,
the guidance failure report, the evaluation metrics, the molecules left out as non-finite).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from moldiff.guidance.baselines import atoms_baseline, evaluator_bounds, predict, protocol_pairs
from moldiff.guidance.guided import GuidanceReport, Scale, check_clip, guided
from moldiff.guidance.property_energy import PropertyEnergy
from moldiff.jobs.cli import require_package
from moldiff.jobs.evaluate import write_json
from moldiff.jobs.sample import batch_bounds, check_options, drop_non_finite, write_outputs
from moldiff.model.checkpoint import checkpoint_path, property_checkpoint_path
from moldiff.model.diffusion import DiffusionModel
from moldiff.model.property import PropertyModel
from moldiff.nn.context import ContextSlot
from moldiff.data.qm9 import PROPERTY_UNITS, QM9_TARGETS
from moldiff.sampling.generate import generate
from moldiff.sampling.samplers import SAMPLERS


def property_checkpoint(cfg, role: str) -> Path:
    """``shipped`` (the package's multi-task model for the six properties) or a path."""
    given = str(cfg.guide_ckpt if role == "guide" else cfg.evaluator_ckpt)
    path = property_checkpoint_path(given, role)
    if not path.is_file():
        raise FileNotFoundError(f"{role}_ckpt: no checkpoint at {path}"
                                + (" (the shipped property models are missing from this install)" if given == "shipped" else
                                   f"; train one with `python scripts/train_property.py property=all role={role}`, or use {role}_ckpt=shipped"))
    return path


def check_config(cfg) -> None:

    if cfg.mode not in ("design", "protocol"):
        raise ValueError(f"mode: 'design' or 'protocol', got {cfg.mode!r}")
    if cfg.property is None and float(cfg.xtb.scale) == 0:
        raise ValueError("nothing to guide with: give a property or xtb.scale > 0")
    if cfg.property is not None:
        if cfg.property not in QM9_TARGETS:
            raise ValueError(f"property: unknown {cfg.property!r}; use one of {list(QM9_TARGETS)}")
        if cfg.mode == "design":
            try:
                target = float(cfg.target)
            except (TypeError, ValueError):
                raise ValueError(f"target: a number in the property's units is needed for mode=design, got {cfg.target!r}") from None
            if not math.isfinite(target):
                raise ValueError(f"target must be finite, got {cfg.target}")
        property_checkpoint(cfg, "guide")
        property_checkpoint(cfg, "evaluator")
    elif cfg.mode == "protocol":
        raise ValueError("mode=protocol needs a property")
    if float(cfg.scale) < 0 or float(cfg.xtb.scale) < 0:
        raise ValueError("guidance scales must be >= 0")
    if float(cfg.xtb.scale) > 0:
        require_package("tblite", f"xtb.scale={cfg.xtb.scale}")
    Scale(cfg.scale, cfg.t_min, cfg.t_max, cfg.scale_kind)
    check_clip(cfg.get("clip"))
    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"sampler: unknown {cfg.sampler!r}; use one of {sorted(SAMPLERS)}")
    if int(cfg.n) < 1 or int(cfg.steps) < 1 or int(cfg.batch_size) < 1:
        raise ValueError("n, steps and batch_size must be >= 1")
    batch_bounds(cfg)
    check_options(cfg)
    checkpoint_path(cfg.ckpt)


def load_property_net(path: Path, device, prop: str, layout=None):
    """(predictor, its output column for ``prop``); a clear error if the model does not predict it,
    or if it reads atoms in another feature layout than ``layout`` (the base model's)."""
    model = PropertyModel.load(path, device=device)
    try:
        column = model.column(prop)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if layout is not None and model.layout != layout:
        raise ValueError(f"{path} reads atoms as {model.layout.vocab.symbols} (charges: {model.layout.include_charges}), "
                         f"the base model as {layout.vocab.symbols} (charges: {layout.include_charges}): they do not fit together")
    return model.net, column


def base_eps(module, prop: str | None):
    """The base model's eps function and, for a conditional base, the slot its targets go into
    (a conditional base must be conditioned on exactly the guided property: EEGSDE's setting)."""
    if getattr(module, "context", None) is None:
        return module.eps_fn(), None
    if prop is None or module.context.names != [prop]:
        raise ValueError(f"the base model is conditional on {module.context.names}: it can only be guided towards that property, not {prop!r}")
    slot = ContextSlot()
    return module.eps_fn(context=slot), slot


def mae_line(prop: str, result: dict, n_made: int, n: int) -> str:
    """The printed MAE, in the property's unit."""
    mae = "n/a" if result["mae"] is None else f"{result['mae']:.4g} {PROPERTY_UNITS[prop]}"
    unscored = n_made - result["n_scored"]
    return (f"{prop}: MAE {mae} ({result['scored_by']}) over {result['n_scored']} of {n} molecules"
            + (f"; {unscored} with a non-finite prediction" if unscored else ""))


def run_guidance(cfg, output_dir) -> dict:
    check_config(cfg)
    out = Path(cfg.output) if cfg.output else Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    module = DiffusionModel.load(checkpoint_path(cfg.ckpt), device)
    base, slot = base_eps(module, cfg.property)  # a conditional base must match the property: fail before any work
    n = int(cfg.n)
    sizes, targets = None, None
    if cfg.property is not None:
        if cfg.mode == "protocol":
            sizes, targets = protocol_pairs(cfg.property, n, int(cfg.seed))
        else:
            targets = np.full(n, float(cfg.target))
    terms = []
    energy = None
    if cfg.property is not None:
        net, column = load_property_net(property_checkpoint(cfg, "guide"), device, cfg.property, module.layout)
        energy = PropertyEnergy(net, None, name=cfg.property, column=column)
        terms.append((energy, Scale(cfg.scale, cfg.t_min, cfg.t_max, cfg.scale_kind)))
    if float(cfg.xtb.scale) > 0:
        from moldiff.guidance.xtb_energy import XTBEnergy

        xtb = XTBEnergy(module.sde, module.layout, int(cfg.xtb.workers))
        terms.append((xtb, Scale(cfg.xtb.scale, 0.0, cfg.xtb.t_max)))
    report = GuidanceReport()
    eps_fn = guided(base, module.sde, terms, report, clip=None if cfg.get("clip") is None else float(cfg.clip))

    def before_batch(k, first, last):
        report.offset = first
        batch_targets = None if targets is None else torch.as_tensor(targets[first:last], dtype=torch.float32, device=device)
        if slot is not None:
            slot.values = batch_targets
        if energy is not None:
            energy.target = batch_targets

    t0 = time.perf_counter()
    # Deliberately the sampler's exact form, not sample.py's recommended options: every guidance
    # figure was measured so (docs/guidance.md); options={late_noise:0.5,late_t:0.5} opts in.
    mols = generate(module, n, sampler=cfg.sampler, steps=int(cfg.steps), batch_size=int(cfg.batch_size), seed=int(cfg.seed), device=device,
                    sizes=sizes, eps_fn=eps_fn, before_batch=before_batch, progress=sys.stderr.isatty(), **batch_bounds(cfg),
                    **check_options(cfg))
    seconds = time.perf_counter() - t0
    for energy_term, _ in terms:
        getattr(energy_term, "close", lambda: None)()  # the xTB worker pool
    result = {"mode": cfg.mode, "property": cfg.property, "scale": float(cfg.scale), "xtb_scale": float(cfg.xtb.scale), "n": n,
              "sampling_seconds": round(seconds, 1), "guidance": report.to_dict()}
    # Guidance never turns a finite eps non-finite, but the base model can still end a molecule
    # non-finite (on its own, or where guidance drove it far off its domain): such a molecule is
    # neither written nor scored, and counted. The files, targets and predictions keep the order of
    # the molecules kept; ``left_out`` holds the sampling indices of the others.
    mols, kept, left_out = drop_non_finite(mols, "not written, not scored, not in the metrics")
    if left_out:
        result["left_out"] = left_out
    if cfg.property is not None:
        # phi_c scores, never the guide: a guide judging the samples it steered would flatter them
        net, column = load_property_net(property_checkpoint(cfg, "evaluator"), device, cfg.property, module.layout)
        pred = predict(net, mols, module.layout, device, column) if len(mols) else np.zeros(0)
        targets = targets[kept]
        scored = np.isfinite(pred)
        result.update({"scored_by": "evaluator", "evaluator_ckpt": str(property_checkpoint(cfg, "evaluator")),
                       "mae": float(np.abs(pred[scored] - targets[scored]).mean()) if scored.any() else None,
                       "n_scored": int(scored.sum()), "targets": targets.tolist(), "predictions": pred.tolist()})
        if cfg.mode == "protocol":  # EDM's reference rows, on as many real held-out molecules

            result["baselines"] = {"atoms": atoms_baseline(cfg.property, n, int(cfg.seed)),
                                   **evaluator_bounds(cfg.property, net, module.layout, device, n, int(cfg.seed), column)}
    result["metrics"] = write_outputs(mols, module, out, cfg) if len(mols) else {}  # files always; metrics unless evaluation=null
    write_json(out / "guidance.json", result)  # a non-finite prediction is null there
    if "mae" in result:
        print(mae_line(cfg.property, result, len(mols), n))
    print(f"guidance failures: {result['guidance']['failures'] or 'none'}")
    return result
