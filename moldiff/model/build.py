"""Networks, noise processes and losses from plain config dicts (the same dicts are stored in
checkpoints, so a checkpoint rebuilds its model without the config files)."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from moldiff.data.elements import vocabulary
from moldiff.data.features import FeatureLayout
from moldiff.loss.objective import DiffusionLoss
from moldiff.nn.egnn import EGNN
from moldiff.noise.schedules import SCHEDULES, get_schedule
from moldiff.noise.vp_sde import VPSDE

NETWORKS = ("egnn", "e3nn")


def plain(cfg):
    """A resolved OmegaConf node as plain Python containers (anything else unchanged)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def feature_layout(features: dict[str, Any]) -> FeatureLayout:
    return FeatureLayout(
        vocabulary(features["vocabulary"]),
        include_charges=bool(features.get("include_charges", True)),
        onehot_scale=float(features.get("onehot_scale", 4.0)),
        charge_scale=float(features.get("charge_scale", 10.0)),
    )


def network(model: dict[str, Any], in_features: int, context_features: int = 0) -> nn.Module:
    kwargs = {k: v for k, v in model.items() if k != "name"}
    if context_features:
        kwargs["context_features"] = int(context_features)
    name = model.get("name")
    if name == "egnn":
        return EGNN(in_features, **kwargs)
    if name == "e3nn":
        from moldiff.nn.e3nn_net import E3NNNet

        return E3NNNet(in_features, **kwargs)
    raise ValueError(f"unknown model name {name!r}; use one of {NETWORKS}")


def ema(net: nn.Module, decay: float) -> AveragedModel | None:
    """The exponential moving average of ``net``'s weights (and buffers) at ``decay``, the copy
    samplers use; None for ``decay <= 0``. Its state-dict keys are ``module.*`` and ``n_averaged``."""
    if decay <= 0:
        return None
    # a copy, not trained (DDP rejects unused trainable parameters)
    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True).requires_grad_(False)


def sde(noise: dict[str, Any]) -> VPSDE:
    kwargs = {k: v for k, v in noise.items() if k not in ("schedule", "prediction")}
    return VPSDE(get_schedule(noise["schedule"], **kwargs), prediction=noise.get("prediction", "eps"))


def same_noise(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two noise configs describe the same process (checkpoints from before the
    prediction switch predict eps)."""
    return {"prediction": "eps", **a} == {"prediction": "eps", **b}


def loss(loss_cfg: dict[str, Any], process: VPSDE, layout: FeatureLayout) -> DiffusionLoss:
    low_t = loss_cfg.get("low_t") or {}
    return DiffusionLoss(process, layout, loss_cfg["weighting"], loss_cfg.get("timesteps"), loss_cfg.get("t0", 0.0),
                         tuple(loss_cfg.get("snr_clip", (0.05, 1.5))), (low_t.get("fraction", 0.0), low_t.get("t_max", 0.05)),
                         dict(loss_cfg.get("weights") or {}))


def check(model: dict, noise: dict, loss_cfg: dict, features: dict) -> None:
    """Build everything once on the CPU: a bad name or argument fails here, before any work."""
    if noise.get("schedule") not in SCHEDULES:
        raise ValueError(f"noise.schedule: unknown {noise.get('schedule')!r}; use one of {sorted(SCHEDULES)}")
    layout = feature_layout(features)
    try:
        network(model, layout.dim)
    except TypeError as e:  # an unknown keyword of the network class
        raise ValueError(f"model: {e}") from None
    try:
        process = sde(noise)
    except TypeError as e:
        raise ValueError(f"noise: {e}") from None
    loss(loss_cfg, process, layout)
