"""Make a small inference checkpoint from a training one: network and EMA weights, the configs
that rebuild them and the training record; no optimizer state (a few MB instead of ~3x that).

    python -m moldiff.train.export outputs/train/qm9_cpu/checkpoints/last.ckpt moldiff/checkpoints/qm9_egnn.ckpt

The result loads with ``DiffusionModel.load`` (sampling, likelihoods) and warm-starts training
(``init_from=<path>`` or ``init_from=shipped``) with a fresh optimizer.

``--compact`` (how shipped models are written since the repository's checkpoint budget ran low,
docs/training.md): only the EMA weights, the ones every sampler and likelihood uses, their
matrices stored in float16 (vectors such as biases stay float32), about a quarter of the full
export. ``read_checkpoint`` casts them back to float32 and gives the network the EMA weights too,
so a compact file loads and warm-starts like a full one; a warm start from it continues from the
EMA weights, not the raw ones. What float16 costs: benchmarks/results_compact_checkpoint.json.
A model trained without EMA (the property models) keeps all its
weights, the same way (half the full export); ``load_state_dict`` casts them back to float32 when
it loads (what that costs in MAE: docs/guidance.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from moldiff.io.writers import atomic_write
from moldiff.model.checkpoint import load_file

COMPACT_DTYPE = torch.float16  # 10 mantissa bits: relative rounding 5e-4; weights stay far inside its range
KEEP = ("state_dict", "hyper_parameters", "moldiff_record", "epoch", "global_step", "pytorch-lightning_version")


def export_checkpoint(src: str | Path, dst: str | Path, shadow_ema: float | None = None, compact: bool = False) -> dict:
    """``shadow_ema``: export with the run's extra EMA at that decay (``ShadowEMA``) as the EMA weights.
    ``compact``: EMA weights only (all weights for a model without EMA), matrices in float16 (see the module's docstring)."""
    ckpt = load_file(src)  # weights_only, one-line errors
    missing = [k for k in ("state_dict", "hyper_parameters") if k not in ckpt]
    if missing:
        raise ValueError(f"{src} is not a moldiff training checkpoint (no {missing})")
    small = {k: ckpt[k] for k in KEEP if k in ckpt}
    small["state_dict"] = {k: v.contiguous().clone() for k, v in small["state_dict"].items()}
    if shadow_ema is not None:
        averages = ckpt.get("callbacks", {}).get("ShadowEMA", {}).get("averages", {})
        if repr(float(shadow_ema)) not in averages:
            raise ValueError(f"{src} keeps no extra EMA at decay {shadow_ema} (it has {sorted(averages) or 'none'}; train with shadow_ema=[...])")
        for k, v in averages[repr(float(shadow_ema))].items():
            small["state_dict"][f"ema.module.{k}"] = v.contiguous().clone()
        small["hyper_parameters"] = {**small["hyper_parameters"], "ema_decay": float(shadow_ema)}
    if compact:
        small["state_dict"], network = compact_state(small["state_dict"], src)
        small["moldiff_compact"] = {"dtype": str(COMPACT_DTYPE).removeprefix("torch."), "network": network}
    with atomic_write(dst, "wb") as f:
        torch.save(small, f)
    return small


def export_last(run: str | Path) -> tuple[Path, dict]:
    """A run folder's ``checkpoints/last.ckpt`` exported compactly to ``exports/step_<N>.ckpt``
    (what a campaign leg evaluates and ships): the path and the exported dict."""
    run = Path(run)
    last = run / "checkpoints" / "last.ckpt"
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    export = run / "exports" / f"step_{step}.ckpt"
    export.parent.mkdir(exist_ok=True)
    return export, export_checkpoint(last, export, compact=True)


def compact_state(state: dict, src) -> tuple[dict, str]:
    """(the weights a model is used with, matrices in float16; which they are): a diffusion model's EMA
    weights, or all the weights of a model trained without EMA (the property models)."""
    kept = {k: v for k, v in state.items() if k.startswith("ema.")}
    network = "ema"
    if not any(k.startswith("ema.module.") for k in kept):
        if kept:  # EMA bookkeeping without its weights: not a file to guess about
            raise ValueError(f"{src}: no EMA weights to export compactly")
        kept, network = dict(state), "weights"
    limit = torch.finfo(COMPACT_DTYPE).max
    for k, v in kept.items():
        if v.is_floating_point() and not (torch.isfinite(v).all() and v.abs().max() < limit):
            raise ValueError(f"{src}: weight {k} is not finite or does not fit {COMPACT_DTYPE}; export it in full")
    # Only weight matrices go to float16. Vectors (biases, a property model's target mean and spread)
    # stay float32: they cost next to nothing, and float16 would round a mean of 75 Bohr^3 by up to
    # 0.03, a shift of every prediction.
    return {k: v.to(COMPACT_DTYPE) if v.is_floating_point() and v.dim() >= 2 else v for k, v in kept.items()}, network


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--shadow-ema", type=float, default=None, help="export the run's extra EMA at this decay as the EMA weights")
    p.add_argument("--compact", action="store_true", help="EMA weights only, in float16 (a quarter of the size)")
    a = p.parse_args(argv)
    small = export_checkpoint(a.src, a.dst, a.shadow_ema, a.compact)
    print(f"wrote {a.dst} ({Path(a.dst).stat().st_size / 1e6:.1f} MB, step {small.get('global_step')}, epoch {small.get('epoch')})")


if __name__ == "__main__":
    main()
