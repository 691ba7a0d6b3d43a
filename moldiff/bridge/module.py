"""Bridge refinement as a LightningModule: two equivariant networks (backward eps, forward residual)
fitted alternately by IMF (``bridge/imf.py``), each phase on couplings simulated by the other.

Phase p (``phase_steps`` optimizer steps each): even p fits the forward network on couplings the
backward network samples from N(0, I) at the horizon; odd p fits the backward network on couplings
the forward network makes from training molecules. Couplings are simulated at the start of a
phase from seeds (seed, p) with the *other*, frozen network, so a resumed run rebuilds exactly the
coupling it was using; minibatches and noise are seeded by the global step.

The backward process is a ``DiffusionModel`` (the base model's network with its EMA, built by the
model layer), and the refined model it exports is one too, in the model layer's state-dict layout;
the forward network's EMA is the model layer's as well (``build.ema``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from moldiff.bridge.imf import backward_loss, forward_loss, simulate_backward, simulate_forward
from moldiff.model import build
from moldiff.model.diffusion import DiffusionModel
from moldiff.nn.denoiser import state_denoiser
from moldiff.sampling.base import sample_sizes, sizes_to_batch
from moldiff.state import MolState


class Coupling:
    """Simulated (clean, end) molecule pairs, gathered into minibatches by molecule index. The
    pairs are kept as flat per-atom tensors (x_0, h_0, x_T, h_T) for the gather; ``batch`` hands
    out states."""

    def __init__(self, x0, h0, xT, hT, sizes: torch.Tensor):
        self.x0, self.h0, self.xT, self.hT = x0, h0, xT, hT
        self.sizes = sizes
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sizes, 0)])

    def __len__(self) -> int:
        return len(self.sizes)

    def batch(self, idx: torch.Tensor, device=None) -> tuple[MolState, MolState]:
        """(clean, end) states of the molecules ``idx``."""
        counts = self.sizes[idx]
        atoms = torch.cat([torch.arange(int(self.offsets[i]), int(self.offsets[i + 1])) for i in idx.tolist()])
        batch, n = sizes_to_batch(counts)
        clean = MolState(batch, n, pos=self.x0[atoms], atom_type=self.h0[atoms])
        end = MolState(batch, n, pos=self.xT[atoms], atom_type=self.hT[atoms])
        return (clean, end) if device is None else (clean.to(device), end.to(device))


class Gated(nn.Module):
    """net's outputs times learnable gates that start at 0: the forward network starts as the
    reference process itself (r = 0) instead of at a random drift."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.gate = nn.Parameter(torch.zeros(2))

    def forward(self, x, h, t, batch, n):
        ox, oh = self.net(x, h, t, batch, n)
        return self.gate[0] * ox, self.gate[1] * oh


class BridgeModule(pl.LightningModule):
    def __init__(self, base: dict[str, Any], horizon: float = 1.0, steps: int = 50, t_min: float = 1e-3, phase_steps: int = 500,
                 coupling: int = 2000, batch_size: int = 64, sim_batch_size: int = 500, lr: float = 1e-4, ema_decay: float = 0.999,
                 seed: int = 0, clip: float = 1.0):
        super().__init__()
        self.save_hyperparameters()
        if not 0 < horizon <= 1 or not 0 < t_min < horizon:
            raise ValueError(f"need 0 < t_min < horizon <= 1, got t_min={t_min}, horizon={horizon}")
        self.automatic_optimization = False
        # the backward process: the base model's network and EMA (the bridge's decay), fitted in place
        self.backward_model = DiffusionModel(**{**base, "ema_decay": ema_decay})
        self.layout, self.sde = self.backward_model.layout, self.backward_model.sde
        self.forward_net = Gated(build.network(base["model"], self.layout.dim))
        self.forward_ema = build.ema(self.forward_net, ema_decay)
        self.data = None  # training molecules (a MoleculeDataset), attached by the job; not saved
        self._coupling: tuple[int, Coupling] | None = None

    @property
    def backward_net(self) -> nn.Module:
        return self.backward_model.net

    def backward_eps(self, ema: bool):
        """The backward process as the epsilon function it is fitted and simulated as: the base
        model's own conversion of its network's output, whatever it predicts (``noise.prediction``
        eps, x0 or v), the one its sampler uses."""
        return self.backward_model.eps_fn(ema=ema)

    def forward_network(self) -> nn.Module:
        """The forward process as simulated: its EMA weights (the latest ones with ``ema_decay=0``)."""
        return self.forward_net if self.forward_ema is None else self.forward_ema.module

    def start_from(self, base_state: dict[str, torch.Tensor]) -> None:
        """Iteration 0: the pretrained network (its EMA weights) is the backward process."""
        self.backward_model.net.load_state_dict(base_state)
        if self.backward_model.ema is not None:
            self.backward_model.ema.module.load_state_dict(base_state)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # runs saved before the backward process was a DiffusionModel named it backward_net / backward_ema
        state = checkpoint["state_dict"]
        for old, new in (("backward_net.", "backward_model.net."), ("backward_ema.", "backward_model.ema.")):
            for k in [k for k in state if k.startswith(old)]:
                state[new + k[len(old):]] = state.pop(k)

    # --- phases and couplings ---------------------------------------------------------------------
    def phase(self, step: int | None = None) -> int:
        return int(self.global_step if step is None else step) // int(self.hparams.phase_steps)

    def _simulate(self, phase: int) -> Coupling:
        hp = self.hparams
        g = torch.Generator(device=self.device).manual_seed(hp.seed * 1_000_003 + phase)
        parts = []
        if phase % 2 == 0:  # backward samples from the prior, for the forward fit
            sizes = sample_sizes(build_histogram(hp.base), hp.coupling, torch.Generator().manual_seed(hp.seed * 1_000_003 + phase))
            for chunk in torch.split(sizes, hp.sim_batch_size):
                clean, end = simulate_backward(self.backward_eps(ema=True), self.sde, chunk.to(self.device),
                                               self.layout.dim, hp.steps, hp.t_min, hp.horizon, g)
                parts.append((clean.pos.cpu(), clean.atom_type.cpu(), end.pos.cpu(), end.atom_type.cpu(), chunk))
        else:  # forward trajectories from the data, for the backward fit
            if self.data is None:
                raise RuntimeError("BridgeModule.data: attach the training molecules before fitting")
            rng = np.random.default_rng(hp.seed * 1_000_003 + phase)
            idx = torch.from_numpy(rng.choice(len(self.data), size=hp.coupling, replace=hp.coupling > len(self.data)))
            for chunk in torch.split(idx, hp.sim_batch_size):
                b = self.data[chunk.numpy()].to(self.device)
                end = simulate_forward(state_denoiser(self.forward_network()), self.sde, b.state(), hp.steps, hp.t_min, hp.horizon, g)
                parts.append((b.x.cpu(), b.h.cpu(), end.pos.cpu(), end.atom_type.cpu(), torch.bincount(b.batch, minlength=b.n_mol).cpu()))
        return Coupling(*(torch.cat([p[k] for p in parts]) for k in range(5)))

    def coupling(self) -> Coupling:
        phase = self.phase()
        if self._coupling is None or self._coupling[0] != phase:
            with torch.no_grad():
                self._coupling = (phase, self._simulate(phase))
        return self._coupling[1]

    # --- training ----------------------------------------------------------------------------------
    def training_step(self, _, batch_idx: int):
        hp = self.hparams
        coupling = self.coupling()
        phase = self.phase()
        fit_forward = phase % 2 == 0
        key = (hp.seed * 1_000_003 + self.global_step) % (2**63)
        idx = torch.randint(len(coupling), (min(hp.batch_size, len(coupling)),), generator=torch.Generator().manual_seed(key))
        g = torch.Generator(device=self.device).manual_seed(key)
        clean, end = coupling.batch(idx, self.device)
        n = clean.n_mol
        opt_f, opt_b = self.optimizers()
        opt, net = (opt_f, self.forward_net) if fit_forward else (opt_b, self.backward_net)
        # the forward network's raw output is its residual
        if fit_forward:
            loss = forward_loss(state_denoiser(net), self.sde, clean, end, hp.horizon, g)
        else:
            loss = backward_loss(self.backward_eps(ema=False), self.sde, clean, end, hp.t_min, hp.horizon, g)
        opt.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(opt, gradient_clip_val=hp.clip, gradient_clip_algorithm="norm")
        opt.step()
        if not fit_forward:
            self.backward_model.update_ema()
        elif self.forward_ema is not None:
            self.forward_ema.update_parameters(self.forward_net)
        self.log("bridge/forward_loss" if fit_forward else "bridge/backward_loss", loss, prog_bar=True, batch_size=n)
        self.log("bridge/phase", float(phase), prog_bar=True, batch_size=n)
        return loss

    def configure_optimizers(self):
        lr = float(self.hparams.lr)
        return [torch.optim.Adam(self.forward_net.parameters(), lr=lr), torch.optim.Adam(self.backward_net.parameters(), lr=lr)]

    # --- the refined model as a diffusion model -------------------------------------------------------
    def refined_model(self) -> DiffusionModel:
        """The refined backward process as a ``DiffusionModel`` with the base model's configs and the
        bridge's horizon; its network holds the EMA weights too, so it samples the same either way."""
        refined = DiffusionModel(**{**self.hparams.base, "horizon": float(self.hparams.horizon)})
        weights = self.backward_model.network(ema=True).state_dict()
        refined.net.load_state_dict(weights)
        if refined.ema is not None:
            refined.ema.module.load_state_dict(weights)
            if self.backward_model.ema is not None:
                refined.ema.n_averaged.copy_(self.backward_model.ema.n_averaged)
        return refined


def build_histogram(base: dict) -> dict[int, int]:
    return {int(k): int(v) for k, v in base["size_histogram"].items()}
