"""The job behind ``scripts/train_property.py``: a property guide g(z_t, t) or an evaluator phi_c on
QM9's first training half (EEGSDE / EDM protocol), with the diffusion trainer's checkpointing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moldiff.data.loader import MoleculeDataset
from moldiff.data.qm9 import QM9_TARGETS
from moldiff.jobs.train import _plain, check_trainer, fit, load_split, make_loaders, prepare
from moldiff.model import build
from moldiff.nn.property import PropertyPredictor
from moldiff.train.module import TrainingRecord
from moldiff.train.property_module import PropertyModule


def property_names(value) -> str | list[str]:
    """``property`` from the config: one name, ``all`` (the six QM9 targets, one shared model) or a list."""
    if isinstance(value, str) and value != "all":
        names = [value]
    else:
        names = list(QM9_TARGETS) if value == "all" else [str(v) for v in value]
    unknown = [v for v in names if v not in QM9_TARGETS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"property: unknown or repeated {unknown or names}; use one of {list(QM9_TARGETS)}, 'all' or a list of them")
    return value if isinstance(value, str) and value != "all" else names


def check_config(cfg) -> None:
    property_names(_plain(cfg.property))
    if cfg.role not in ("guide", "evaluator"):
        raise ValueError(f"role: 'guide' (noisy, time-conditioned) or 'evaluator' (clean), got {cfg.role!r}")
    if int(cfg.batch_size) < 1 or float(cfg.optim.lr) <= 0:
        raise ValueError("batch_size must be >= 1 and optim.lr > 0")
    layout = build.feature_layout(_plain(cfg.dataset.features))
    try:
        PropertyPredictor(layout.dim, **_plain(cfg.model))
    except TypeError as e:
        raise ValueError(f"model: {e}") from None
    build.sde(_plain(cfg.noise))
    check_trainer(cfg)


def run_property_training(cfg, output_dir) -> PropertyModule:
    check_config(cfg)
    prepare(cfg)
    output_dir = Path(output_dir)
    ckpt_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else output_dir / "checkpoints"
    layout = build.feature_layout(_plain(cfg.dataset.features))
    train = load_split(f"{cfg.dataset.name}:{cfg.split}", layout, cfg.train_max, int(cfg.seed))
    val = load_split(f"{cfg.dataset.name}:{cfg.val}", layout, cfg.val_max, int(cfg.seed)) if cfg.val else None
    target = property_names(_plain(cfg.property))
    train, val = MoleculeDataset(train.mols, layout, target), (MoleculeDataset(val.mols, layout, target) if val else None)
    y = np.asarray(train.y, dtype=np.float64)
    module = PropertyModule(target, cfg.role, _plain(cfg.model), _plain(cfg.noise), _plain(cfg.dataset.features), _plain(cfg.optim),
                            y.mean(0).tolist(), y.std(0).tolist(), int(cfg.seed))
    return fit(cfg, module, *make_loaders(cfg, train, val), output_dir, ckpt_dir, TrainingRecord())
