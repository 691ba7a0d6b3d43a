"""The job behind ``scripts/refine_bridge.py``: load a trained diffusion, refine it by IMF with
Lightning (resumable), export the refined backward network as a diffusion checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from moldiff.bridge.module import BridgeModule
from moldiff.jobs.train import fit, load_split, prepare
from moldiff.model.checkpoint import checkpoint_path, read_checkpoint, write_checkpoint
from moldiff.model.diffusion import DiffusionModel
from moldiff.train.module import TrainingRecord


class _Steps(IterableDataset):
    """Lightning wants a loader; the couplings are simulated inside the module."""

    def __iter__(self):
        while True:
            yield 0


def check_config(cfg) -> None:
    for key in ("iterations", "steps", "phase_steps", "coupling", "batch_size", "sim_batch_size"):
        if int(cfg[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {cfg[key]}")
    if not 0 < float(cfg.t_min) < float(cfg.horizon) <= 1:
        raise ValueError(f"need 0 < t_min < horizon <= 1, got t_min={cfg.t_min}, horizon={cfg.horizon}")
    if float(cfg.lr) <= 0 or not 0 <= float(cfg.ema_decay) < 1:
        raise ValueError("lr must be > 0 and ema_decay in [0, 1)")
    checkpoint_path(cfg.ckpt)


def base_weights(ckpt: dict) -> dict[str, torch.Tensor]:
    """The base model's EMA network weights (its raw ones if it has no EMA)."""
    return DiffusionModel.from_checkpoint(ckpt).network(ema=True).state_dict()


def export_refined(module: BridgeModule, base_ckpt: dict, path: Path, record: list) -> Path:
    """A diffusion checkpoint (``DiffusionModel.load``, ``DiffusionModule.load_from_checkpoint``)
    with the refined backward network and the horizon it samples from."""
    refined = module.refined_model()
    settings = {k: module.hparams[k] for k in ("horizon", "steps", "t_min", "phase_steps", "coupling", "batch_size", "lr", "ema_decay", "seed")}
    ckpt = {"state_dict": refined.state_dict(), "hyper_parameters": refined.config, "pytorch-lightning_version": pl.__version__,
            "moldiff_record": list(base_ckpt.get("moldiff_record", [])) + [{"bridge_refinement": settings, "sessions": record,
                                                                            "global_step": int(module.global_step)}]}
    return write_checkpoint(path, ckpt)


def run_refinement(cfg, output_dir) -> tuple[BridgeModule, Path]:
    check_config(cfg)
    prepare(cfg)
    output_dir = Path(output_dir)
    ckpt_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else output_dir / "checkpoints"
    base_path = checkpoint_path(cfg.ckpt)
    base = read_checkpoint(base_path)
    if base["hyper_parameters"].get("context"):
        raise ValueError(f"{base_path} is a conditional model ({base['hyper_parameters']['context']['names']}); bridge refinement takes unconditional ones")
    module = BridgeModule(base=dict(base["hyper_parameters"]), horizon=float(cfg.horizon), steps=int(cfg.steps), t_min=float(cfg.t_min),
                          phase_steps=int(cfg.phase_steps), coupling=int(cfg.coupling), batch_size=int(cfg.batch_size),
                          sim_batch_size=int(cfg.sim_batch_size), lr=float(cfg.lr), ema_decay=float(cfg.ema_decay), seed=int(cfg.seed))
    module.start_from(base_weights(base))  # a resumed run then restores its own weights over these
    spec = cfg.data or f"{base['hyper_parameters'].get('dataset') or 'qm9'}:train"
    module.data = load_split(spec, module.layout, cfg.data_max, int(cfg.seed))
    cfg.trainer.max_steps = int(cfg.iterations) * 2 * int(cfg.phase_steps)
    record = TrainingRecord()
    fit(cfg, module, DataLoader(_Steps(), batch_size=None), None, output_dir, ckpt_dir, record)
    path = export_refined(module, base, Path(cfg.export) if cfg.export else output_dir / "refined.ckpt", record._current(module.trainer))
    print(f"refined model: {path} (sample with `python scripts/sample.py ckpt={path}`)")
    return module, path
