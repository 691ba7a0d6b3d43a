"""Make a small inference checkpoint from a training one: network and EMA weights, the configs
that rebuild them and the training record; no optimizer state (a few MB instead of ~3x that).

    python -m moldiff.train.export outputs/train/qm9_cpu/checkpoints/last.ckpt moldiff/checkpoints/qm9_egnn.ckpt

The result loads with ``DiffusionModule.load_from_checkpoint`` (sampling, likelihoods) and warm-
starts training (``init_from=<path>`` or ``init_from=shipped``) with a fresh optimizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from moldiff.io.writers import atomic_write

KEEP = ("state_dict", "hyper_parameters", "moldiff_record", "epoch", "global_step", "pytorch-lightning_version")


def export_checkpoint(src: str | Path, dst: str | Path, shadow_ema: float | None = None) -> dict:
    """``shadow_ema``: export with the run's extra EMA at that decay (``ShadowEMA``) as the EMA weights."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
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
    with atomic_write(dst, "wb") as f:
        torch.save(small, f)
    return small


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--shadow-ema", type=float, default=None, help="export the run's extra EMA at this decay as the EMA weights")
    a = p.parse_args(argv)
    small = export_checkpoint(a.src, a.dst, a.shadow_ema)
    print(f"wrote {a.dst} ({Path(a.dst).stat().st_size / 1e6:.1f} MB, step {small.get('global_step')}, epoch {small.get('epoch')})")


if __name__ == "__main__":
    main()
