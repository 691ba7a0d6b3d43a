"""The job behind ``scripts/train_property.py``: a property guide g(z_t, t) or an evaluator phi_c on
QM9's first training half (EEGSDE / EDM protocol), with the diffusion trainer's checkpointing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moldiff.data.loader import MoleculeDataset
from moldiff.data.qm9 import QM9_TARGETS
from moldiff.jobs.train import _plain, check_init_from, check_trainer, fit, load_split, make_loaders, prepare
from moldiff.model import build
from moldiff.model.checkpoint import property_checkpoint_path, read_checkpoint
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
    init = cfg.get("init_from")
    check_init_from(None if init is None else property_checkpoint_path(init, cfg.role), cfg.checkpoint.resume)
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
    record = TrainingRecord()
    if cfg.get("init_from") is not None:
        record.history = warm_start(module, property_checkpoint_path(cfg.init_from, cfg.role))
    return fit(cfg, module, *make_loaders(cfg, train, val), output_dir, ckpt_dir, record)


def warm_start(module: PropertyModule, path: Path) -> list:
    """Copy the weights of a property model with the same targets, role and network into a new run
    (fresh optimizer and learning-rate schedule): longer training in legs, e.g. the shipped
    evaluator continued. Its normalisation comes along (the same split gives the same one).
    Returns its training record, which the new run extends."""
    ckpt = read_checkpoint(path)
    theirs, ours = ckpt["hyper_parameters"], module.hparams
    for key in ("target", "role", "model", "features"):
        if _plain(theirs[key]) != _plain(ours[key]):
            raise ValueError(f"init_from {path}: its {key} {theirs[key]} differs from this run's {ours[key]}")
    if ours["role"] == "guide" and not build.same_noise(theirs["noise"], ours["noise"]):
        raise ValueError(f"init_from {path}: the guide was trained on another noise process ({theirs['noise']})")
    module.load_state_dict(ckpt["state_dict"], strict=True)
    print(f"warm start from {path}")
    return list(ckpt.get("moldiff_record", []))
