"""``PropertyModel``: a trained property regressor (a guide or an evaluator) and what is needed to use it.

It holds the network (``PropertyPredictor``: predictions in each property's units), the targets it
predicts (one output column each), its role, the feature layout it reads atoms in and the noise
process a guide was trained on. The LightningModule in ``moldiff.train.property_module`` only
wraps it for training, as ``DiffusionModule`` wraps ``DiffusionModel``; both read the same files.

    guide = PropertyModel.load("shipped", role="guide")  # or a checkpoint path
    alpha = guide.predict(x, h, t, batch, n)[:, guide.column("alpha")]

Files are read by ``moldiff.model.checkpoint.read_checkpoint``: ``torch.load(weights_only=True)``,
no Lightning needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from moldiff.model import build
from moldiff.model.checkpoint import SHIPPED_PROPERTY, property_checkpoint_path, read_checkpoint, write_checkpoint
from moldiff.nn.property import PropertyPredictor

ROLES = tuple(SHIPPED_PROPERTY)  # "guide": g(z_t, t), time-conditioned; "evaluator": phi_c(x, h), clean molecules
# the hyperparameters the model itself needs; a training checkpoint carries more (optim, seed)
MODEL_KEYS = ("target", "role", "model", "noise", "features", "mean", "std")


class PropertyModel(nn.Module):
    def __init__(self, target: str | list[str], role: str, model: dict[str, Any], noise: dict[str, Any], features: dict[str, Any],
                 mean: float | Sequence[float], std: float | Sequence[float], **extra):
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"role must be 'guide' or 'evaluator', got {role!r}")
        # everything that rebuilds this model, as plain containers; a training run's extra keys travel along
        self.config = {"target": target, "role": role, "model": model, "noise": noise, "features": features, "mean": mean,
                       "std": std, **extra}
        self.layout = build.feature_layout(features)
        self.net = PropertyPredictor(self.layout.dim, time_conditioning=(role == "guide"), mean=mean, std=std, **model)
        self.sde = build.sde(noise)

    @property
    def role(self) -> str:
        return self.config["role"]

    @property
    def targets(self) -> list[str]:
        t = self.config["target"]
        return [t] if isinstance(t, str) else list(t)

    def column(self, name: str) -> int:
        if name not in self.targets:
            raise ValueError(f"this property model predicts {self.targets}, not {name!r}")
        return self.targets.index(name)

    def predict(self, x, h, t, batch, n) -> torch.Tensor:
        """(M, K) predictions in the properties' units (``t``: zeros for an evaluator)."""
        return self.net.predict(x, h, t, batch, n)

    # --- files ---------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "PropertyModel":
        """From a loaded checkpoint dict (training, exported or shipped)."""
        hp = ckpt["hyper_parameters"]
        missing = [k for k in MODEL_KEYS if k not in hp]
        if missing:
            raise ValueError(f"not a property model checkpoint (no {missing} in its hyperparameters)")
        model = cls(**hp)
        model.load_state_dict(ckpt["state_dict"], strict=True)  # float16 weights of a compact export are cast back
        model.record = list(ckpt.get("moldiff_record", []))
        return model

    @classmethod
    def load(cls, name_or_path: str | Path = "shipped", role: str | None = None, device="cpu") -> "PropertyModel":
        """``"shipped"`` with ``role`` (the package's multi-task model for the six QM9 properties) or
        a checkpoint path; in eval mode on ``device``. A given ``role`` is checked against the file's."""
        if str(name_or_path) == "shipped" and role not in ROLES:
            raise ValueError(f"the shipped property models are one per role: give role='guide' or 'evaluator', not {role!r}")
        path = property_checkpoint_path(name_or_path, role) if role in ROLES else Path(name_or_path)
        model = cls.from_checkpoint(read_checkpoint(path))
        if role is not None and model.role != role:
            raise ValueError(f"{path} is a property {model.role}, not a {role}")
        return model.to(device).eval()

    def save(self, path: str | Path, record: list | None = None) -> Path:
        """Weights and configs in one file (atomic), loadable by ``load`` and by the training module."""
        return write_checkpoint(path, {"state_dict": self.state_dict(), "hyper_parameters": self.config,
                                       "moldiff_record": list(record if record is not None else getattr(self, "record", []))})
