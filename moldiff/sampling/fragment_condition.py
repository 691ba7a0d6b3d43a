"""Sampling around a fragment with a fragment-conditioned bond model (issue 30): the model was
trained with random fragments held clean (``loss/fields.py``), so the sampler simply hands it the
user's fragment, clean, at every step, instead of replacing a noised copy (``inpaint.py``).

The molecule lives in the fragment's frame: the fixed atoms at their file coordinates less their
centroid, the free atoms started from N(0, I) around that centroid, as in training. Fixed atoms,
their classes and the bonds among them stay as they are through every step
(``sampling/fields.py``); pairs of a fixed atom that is not an anchor with a free atom
(``data/fragment.py``'s ``fragment_anchors``) are redrawn after each step from q(x_s | no bond), as
training saw unbonded pairs. At the end the centroid is added back, so the fixed atoms sit exactly
at the file's coordinates, and every molecule says which atoms were fixed.
"""

from __future__ import annotations

import torch

from moldiff.sampling.inpaint import fragment_layout, tile_fragment_fields
from moldiff.state import MolState


class FragmentCondition:
    """The fragment of one batch: ``start`` puts it into the prior state, the instance is the
    samplers' per-step callback, ``finish`` puts the molecules into the file's frame."""

    def __init__(self, fragment, sizes: torch.Tensor, fields: dict, processes: dict, anchors=None, generator=None):
        self.fixed, self.file_pos, self.batch = fragment_layout(fragment, sizes)
        self.n, self.processes, self.generator = len(sizes), processes, generator
        self.centroid = self.file_pos[self.fixed].mean(0)  # (3,): the fragment's frame is its centroid
        tiled, pair_fixed = tile_fragment_fields(fields, self.fixed, sizes, len(fragment.numbers), anchors)
        self.fields = tiled
        state = MolState(self.batch, self.n)
        both = self.fixed[state.pairs[:, 0]] & self.fixed[state.pairs[:, 1]]
        self.closed = pair_fixed & ~both if pair_fixed is not None else None  # non-anchor fixed atom - free atom

    def start(self, prior: MolState) -> MolState:
        """The prior state with the fragment in place and the free atoms' positions N(0, I) (no
        zero-CoM projection: the fragment pins the frame)."""
        f = self.fixed
        raw = torch.randn(prior.pos.shape, generator=self.generator, dtype=prior.pos.dtype, device=prior.device)
        pos = torch.where(f[:, None], (self.file_pos - self.centroid).to(prior.pos.dtype), raw)
        changes = {"pos": pos, "fixed": f}
        for name, clean in self.fields.items():
            mask = f[prior.pairs[:, 0]] & f[prior.pairs[:, 1]] if name == "bond" else f
            changes[name] = torch.where(mask, clean, getattr(prior, name))
        return self._close(prior.replace(**changes), 1.0)

    def _close(self, state: MolState, s: float) -> MolState:
        if self.closed is None or not bool(self.closed.any()):
            return state
        tt = torch.full((int(self.closed.sum()),), float(s), dtype=torch.float64, device=state.device)
        zero = torch.zeros(len(tt), dtype=torch.long, device=state.device)
        bond = state.bond.clone()
        bond[self.closed] = self.processes["bond"].perturb(zero, tt, self.generator)
        return state.replace(bond=bond)

    def __call__(self, i: int, t: float, s: float, state: MolState, prediction=None) -> MolState:
        return self._close(state, s)

    def finish(self, state: MolState) -> MolState:
        """The final molecules in the file's frame, the fixed atoms exactly at its coordinates."""
        pos = state.pos + self.centroid.to(state.pos.dtype)
        pos = torch.where(self.fixed[:, None], self.file_pos.to(pos.dtype), pos)
        bond = state.bond if self.closed is None else torch.where(self.closed, torch.zeros_like(state.bond), state.bond)
        return state.replace(pos=pos, bond=bond, fixed=self.fixed)
