"""Substructure-constrained sampling (issue 30): fixed atoms put back through the samplers'
per-step callback (RePaint), for the Gaussian model and the bond model alike.

The model lives on zero-centre-of-mass positions, the fragment in its file's frame. What the file
fixes is the fragment's *shape*, its atoms' positions relative to each other; where the fragment
sits relative to the atoms still to be made is as unknown as those atoms are. Per axis, the
zero-CoM space of a molecule splits orthogonally into

    S_F: vectors on the fixed atoms that sum to zero over them (the fragment's shape, k - 1 dims),
    S_R: everything else with zero total (the free atoms relative to the fragment's centroid),

and isotropic noise in the zero-CoM space is independent across the two. After each step t -> s
the callback replaces the state's S_F component with a fresh draw of q(z_s | shape) =
alpha_s (y_F - mean y_F) + sigma_s (eps_F - mean eps_F) and leaves its S_R component (the
fragment's centroid c and the free atoms) as the sampler made it, so the total stays zero. At the
end the exact shape is put back the same way and the whole molecule is translated so that the
fixed atoms sit exactly at the file's coordinates. Categorical fields of fixed atoms (types,
charges) and pairs between two fixed atoms (bonds) are replaced by draws of q(x_s | x_0), their
clean values at the end. So are the pairs between a fixed atom that is not an anchor and a free
atom, with "no bond" as their clean class: without that, the bond model bonded new atoms to the
fragment's hydrogens (``data/fragment.py``'s ``fragment_anchors`` chooses the anchors).

Replacement alone tells the free atoms where the fragment is only through the noisy state the
network sees; the network's estimate wants to move fixed atoms too, replacement puts them back,
and free atoms end up where the fragment "should" have moved: with the shipped model 55 % of
completions had a free atom within 0.75 Å of a fixed one. ``reconstruction = w`` adds Ho et al.'s
reconstruction guidance (Video Diffusion Models, 2022) after each replacement: the free atoms move
by -w alpha_s / 2 times the gradient, with respect to them, of the squared distance between the
network's clean estimate of the fragment's shape and its true shape (one more forward and backward
pass of the network per step), with the molecule's mean removed so the centre of mass stays zero
and the fragment's shape untouched. docs/methods.md derives why replacement is the right conditional; the test
against the closed form of Gaussian point clouds (tests/test_inpaint.py) shows that putting the
fragment back in its file frame and re-centring instead is measurably wrong.
"""

from __future__ import annotations

import numpy as np
import torch

from moldiff.geometry import remove_mean, segment_sum
from moldiff.state import MolState


def _centroid(values: torch.Tensor, mask: torch.Tensor, batch: torch.Tensor, n: int) -> torch.Tensor:
    """(M, D) mean of ``values`` over each molecule's masked atoms (zero where none is masked)."""
    w = mask.to(values.dtype)[:, None]
    count = segment_sum(w, batch, n).clamp_min(1.0)
    return segment_sum(values * w, batch, n) / count


class Inpaint:
    """The RePaint callback. ``fixed`` (A,) bool; ``pos`` (A, 3) the fixed atoms' file coordinates
    (other rows ignored); ``features`` (A, F) the Gaussian model's clean features of the fixed
    atoms, or ``fields`` {name: (N,) clean classes} with ``processes`` for the bond model (for
    ``bond``, one per pair, read where ``pair_fixed`` (P,) is set: pairs of two fixed atoms, and
    pairs of a non-anchor fixed atom with a free one)."""

    def __init__(self, sde, fixed: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor, n: int, generator=None,
                 features: torch.Tensor | None = None, fields: dict | None = None, processes: dict | None = None,
                 resample: int = 1, restep=None, reconstruction: float = 0.0, estimate=None, pair_fixed: torch.Tensor | None = None):
        self.sde, self.fixed, self.batch, self.n, self.generator = sde, fixed.bool(), batch, n, generator
        self.pair_fixed = pair_fixed
        self.file_pos = pos
        self.file_centroid = _centroid(pos, self.fixed, batch, n)  # (M, 3): where the fragment sits in its file
        self.shape = torch.where(self.fixed[:, None], pos - self.file_centroid[batch], torch.zeros_like(pos))
        self.features, self.fields, self.processes = features, fields or {}, processes or {}
        if int(resample) < 1 or (int(resample) > 1 and restep is None):
            raise ValueError(f"resample must be >= 1 (and > 1 needs the sampler's step), got {resample}")
        self.resample, self.restep = int(resample), restep  # restep(state, t, s) -> state: one sampler step
        if not float(reconstruction) >= 0 or (float(reconstruction) > 0 and estimate is None):
            raise ValueError(f"reconstruction must be >= 0 (and > 0 needs the model's estimate), got {reconstruction}")
        # estimate(state, s) -> (A, 3) the network's clean positions, differentiable in state.pos
        self.reconstruction, self.estimate = float(reconstruction), estimate

    # --- positions ------------------------------------------------------------------------------
    def replace_positions(self, pos: torch.Tensor, s: float | None) -> torch.Tensor:
        """The state's fragment shape replaced by q(z_s | shape) (``s`` None: the exact shape),
        the fragment's centroid and the free atoms kept."""
        b, f = self.batch, self.fixed
        c = _centroid(pos, f, b, self.n)[b]
        if s is None:
            shape = self.shape
        else:
            tt = torch.full((self.n,), float(s), dtype=pos.dtype, device=pos.device)
            eps = torch.randn(pos.shape, generator=self.generator, dtype=pos.dtype, device=pos.device)
            eps = eps - _centroid(eps, f, b, self.n)[b]  # noise within the shape subspace S_F
            shape = self.sde.alpha(tt, b) * self.shape.to(pos.dtype) + self.sde.sigma(tt, b) * eps
        return torch.where(f[:, None], c + shape, pos)

    def to_file_frame(self, pos: torch.Tensor) -> torch.Tensor:
        """The final molecule translated so that its fixed atoms sit exactly at the file's coordinates."""
        pos = self.replace_positions(pos, None)
        shift = self.file_centroid - _centroid(pos, self.fixed, self.batch, self.n)
        out = pos + shift[self.batch].to(pos.dtype)
        return torch.where(self.fixed[:, None], self.file_pos.to(pos.dtype), out)  # exact, not up to rounding

    # --- other fields -------------------------------------------------------------------------------
    def _noised_features(self, h: torch.Tensor, s: float | None) -> torch.Tensor:
        if s is None:
            clean = self.features.to(h.dtype)
        else:
            tt = torch.full((self.n,), float(s), dtype=h.dtype, device=h.device)
            z = torch.randn(h.shape, generator=self.generator, dtype=h.dtype, device=h.device)
            clean = self.sde.alpha(tt, self.batch) * self.features.to(h.dtype) + self.sde.sigma(tt, self.batch) * z
        return torch.where(self.fixed[:, None], clean, h)

    def _replace_fields(self, state: MolState, s: float | None) -> dict:
        changes = {}
        for name, clean in self.fields.items():
            mask = self.pair_fixed if name == "bond" else self.fixed
            value = clean
            if s is not None:
                tt = torch.full((len(clean),), float(s), dtype=torch.float64, device=clean.device)
                value = self.processes[name].perturb(clean, tt, self.generator)
            changes[name] = torch.where(mask, value, getattr(state, name))
        return changes

    # --- the callback -------------------------------------------------------------------------------
    def __call__(self, i: int, t: float, s: float, state: MolState, prediction=None) -> MolState:
        state = self._replace(state, s)
        for _ in range(self.resample - 1):
            state = self._replace(self.restep(self.renoise(state, s, t), t, s), s)
        if self.reconstruction > 0:
            state = self.guide(state, s)
        return state

    def guide(self, state: MolState, s: float) -> MolState:
        """Reconstruction guidance: free atoms moved down the gradient of the fragment's shape error
        in the network's clean estimate at time s."""
        b, n, f = self.batch, self.n, self.fixed
        ss = torch.full((n,), float(s), dtype=state.pos.dtype, device=state.device)
        with torch.enable_grad():
            z = state.pos.detach().clone().requires_grad_(True)
            x0 = self.estimate(state.replace(pos=z), ss).to(z.dtype)
            err = x0 - _centroid(x0, f, b, n)[b] - self.shape.to(z.dtype)
            loss = torch.where(f[:, None], err, torch.zeros_like(err)).square().sum()
            (grad,) = torch.autograd.grad(loss, z)
        grad = torch.where(f[:, None], torch.zeros_like(grad), grad)
        grad = remove_mean(grad, b, n)  # a uniform shift: zero CoM kept, shape untouched
        return state.replace(pos=state.pos - self.reconstruction * self.sde.alpha(ss, b) / 2 * grad)

    def _replace(self, state: MolState, s: float) -> MolState:
        changes = {"pos": self.replace_positions(state.pos, s)}
        if self.features is not None:
            changes["atom_type"] = self._noised_features(state.atom_type, s)
        changes.update(self._replace_fields(state, s))
        return state.replace(**changes)

    def renoise(self, state: MolState, s: float, t: float) -> MolState:
        """z_t ~ q(z_t | z_s): the state noised back up the grid, every field by its own process."""
        b, n = state.batch, self.n
        ss = torch.full((n,), float(s), dtype=state.pos.dtype, device=state.device)
        tt = torch.full((n,), float(t), dtype=state.pos.dtype, device=state.device)
        a, var = self.sde.transition(ss, tt, b)
        eps = torch.randn(state.pos.shape, generator=self.generator, dtype=state.pos.dtype, device=state.device)
        eps = remove_mean(eps, b, n)
        changes = {"pos": a * state.pos + var.sqrt() * eps}
        if self.features is not None:
            z = torch.randn(state.atom_type.shape, generator=self.generator, dtype=state.atom_type.dtype, device=state.device)
            changes["atom_type"] = a * state.atom_type + var.sqrt() * z
        for name, process in self.processes.items():
            fb = state.field_batch(name)
            changes[name] = process.transition(getattr(state, name), ss.double()[fb], tt.double()[fb], self.generator)
        return state.replace(**changes)

    def finish(self, state: MolState) -> MolState:
        """The sampler's final molecule with the fragment exactly as given, in the file's frame."""
        changes = {"pos": self.to_file_frame(state.pos), "fixed": self.fixed}
        if self.features is not None:
            changes["atom_type"] = self._noised_features(state.atom_type, None)
        changes.update(self._replace_fields(state, None))
        return state.replace(**changes)



# Reconstruction guidance's weight for users (sample.py, model.sample, generate): docs/design.md, "Tuning"
RECONSTRUCTION = 2.0

# Replacement draws the fixed atoms afresh at each noise level; a probability-flow ODE is
# deterministic given its start, and replacing part of its state makes no consistent conditional.
STOCHASTIC = ("ancestral", "euler_maruyama", "pc")


def check_fragment(fragment, sampler: str, callback=None, resample: int = 1, reconstruction: float = 0.0) -> int:
    """The fragment's atom count (0 without one); a sampler that cannot take it, or a second
    callback beside it, is an error."""
    if int(resample) < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    if not float(reconstruction) >= 0:
        raise ValueError(f"reconstruction must be >= 0 (0: plain replacement), got {reconstruction}")
    if int(resample) > 1 and (fragment is None or sampler != "ancestral"):
        raise ValueError("resample: RePaint's resampling redoes ancestral steps around a fragment; give fragment= and sampler=ancestral")
    if fragment is None:
        return 0
    if len(fragment) != 1:
        raise ValueError(f"fragment: one molecule (two disconnected pieces in it mean linking), got {len(fragment)}")
    if sampler not in STOCHASTIC:
        raise ValueError(f"fragment: sampler {sampler!r} is deterministic or cannot redraw fixed atoms; "
                         f"substructure-constrained sampling uses one of {STOCHASTIC}")
    if callback is not None:
        raise ValueError("fragment: the sampler's callback is the fragment's replacement; give one or the other")
    return len(fragment.numbers)


def fragment_layout(fragment, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For molecules of ``sizes`` atoms whose first k atoms are the fragment's: (A,) fixed flags,
    (A, 3) the fragment's file coordinates on those rows (zeros elsewhere), and (A,) the molecule
    index; float64 coordinates (the file's, exactly)."""
    k = len(fragment.numbers)
    device = sizes.device
    batch = torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes)
    starts = torch.cumsum(sizes, 0) - sizes
    local = torch.arange(len(batch), device=device) - starts[batch]
    fixed = local < k
    pos = torch.zeros(len(batch), 3, dtype=torch.float64, device=device)
    pos[fixed] = torch.as_tensor(np.asarray(fragment.positions, np.float64), device=device).repeat(len(sizes), 1)
    return fixed, pos, batch


def tile_fragment_fields(fields: dict, fixed: torch.Tensor, sizes: torch.Tensor, k: int, anchors=None) -> tuple[dict, torch.Tensor | None]:
    """The fragment's clean classes laid out over a batch of molecules whose first k atoms are its:
    {name: (A,) atom classes or (P,) pair classes}, zeros where not fixed, and (P,) the pairs kept
    at those values: pairs of two fixed atoms, and pairs of a fixed atom that is not an anchor
    (``anchors`` (k,) bool, default all) with a free atom, kept at "no bond"."""
    n = len(sizes)
    tiled, pair_fixed = {}, None
    for name, clean in (fields or {}).items():
        if name == "bond":
            state = MolState(torch.repeat_interleave(torch.arange(n, device=fixed.device), sizes), n)
            i, j = state.pairs[:, 0], state.pairs[:, 1]
            starts = (torch.cumsum(sizes, 0) - sizes)[state.pair_batch]
            li, lj = (i - starts).clamp_max(k - 1), (j - starts).clamp_max(k - 1)
            both = fixed[i] & fixed[j]
            anchor = torch.ones(k, dtype=torch.bool) if anchors is None else torch.as_tensor(np.asarray(anchors, bool))
            closed = torch.zeros_like(fixed)
            closed[fixed] = ~anchor.to(fixed.device).repeat(n)  # fixed atoms that take no new bond
            pair_fixed = both | (closed[i] & ~fixed[j]) | (closed[j] & ~fixed[i])
            tiled[name] = torch.where(both, clean.to(fixed.device)[li, lj], torch.zeros_like(li))  # "no bond" to a free atom
        else:
            full_f = torch.zeros(len(fixed), dtype=torch.long, device=fixed.device)
            full_f[fixed] = clean.to(fixed.device).repeat(n)
            tiled[name] = full_f
    return tiled, pair_fixed


def fragment_inpaint(sde, fragment, sizes: torch.Tensor, generator=None, features=None, fields=None, processes=None,
                     resample: int = 1, restep=None, reconstruction: float = 0.0, estimate=None, anchors=None) -> Inpaint:
    """The ``Inpaint`` callback for one batch of molecules built around ``fragment``. ``features``
    (k, F) or ``fields`` {name: (k,) atom classes, or "bond": (k, k) pair classes} are the fragment's
    clean values; other atoms' rows are filled with zeros and never read. ``anchors`` (k,) bool:
    the fragment atoms that may bond to new atoms (default all); the others keep "no bond" to them."""
    fixed, pos, batch = fragment_layout(fragment, sizes)
    k, n = len(fragment.numbers), len(sizes)
    full = None
    if features is not None:
        full = torch.zeros(len(batch), features.shape[1], dtype=features.dtype, device=pos.device)
        full[fixed] = features.to(pos.device).repeat(n, 1)
    tiled, pair_fixed = tile_fragment_fields(fields, fixed, sizes, k, anchors)
    return Inpaint(sde, fixed, pos, batch, n, generator, features=full, fields=tiled, processes=processes,
                   resample=resample, restep=restep, reconstruction=reconstruction, estimate=estimate, pair_fixed=pair_fixed)
