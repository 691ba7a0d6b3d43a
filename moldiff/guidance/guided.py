"""Guided epsilon functions: score <- score - s(t) grad E(z_t, t) for any sampler.

With score = -eps / sigma_t, subtracting s(t) grad E from the score is adding sigma_t s(t) grad E
to eps, field by field of the state: an energy takes the noised ``MolState`` and gives one
gradient per field. The gradient of a centred field (positions) is projected to zero centre of
mass (the energy may not be translation invariant, the process lives in the zero-CoM subspace).
Several energies add up, each with its own scale schedule.

Failures are molecule-level outcomes, never a crash: an energy may report molecules it could not
evaluate (xTB not converging, a non-finite energy), and a non-finite gradient or a guidance term
that overflows once scaled is detected here; either way that molecule keeps the eps it had
without that energy at that step (guidance never makes a finite eps non-finite), and
``GuidanceReport`` counts it by reason. A non-finite eps from the guided model itself is counted
under ``BASE_MODEL``. With every scale 0 at a time t, the unguided eps is returned untouched
(bit-identical sampling with the same seed).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import reduce
from operator import add
from typing import Callable

import torch

from moldiff.geometry import remove_mean
from moldiff.state import MolState


BASE_MODEL = "base model"  # the report's name for failures of the guided eps function itself


@dataclass
class GuidanceReport:
    """Counts of (molecule, step) pairs where an energy could not guide, by energy and reason."""

    failures: Counter = field(default_factory=Counter)
    failed_molecules: dict = field(default_factory=dict)  # energy name -> set of molecule indices
    clipped: Counter = field(default_factory=Counter)  # energy name -> (molecule, step) pairs whose guidance was capped
    steps: int = 0
    offset: int = 0  # index of the current batch's first molecule in the whole run

    def record(self, energy: str, reason: str, molecules) -> None:
        idx = [self.offset + int(i) for i in molecules]
        if not idx:
            return
        self.failures[(energy, reason)] += len(idx)
        self.failed_molecules.setdefault(energy, set()).update(idx)

    def to_dict(self) -> dict:
        return {
            "guided_steps": self.steps,
            "failures": {f"{e}: {r}": c for (e, r), c in sorted(self.failures.items())},
            "molecules_with_failures": {e: len(s) for e, s in self.failed_molecules.items()},
            **({"clipped": dict(sorted(self.clipped.items()))} if self.clipped else {}),
        }


class Scale:
    """s(t): ``value`` where ``t_min <= t <= t_max``, else 0; ``kind="linear"`` ramps it as (1 - t)."""

    def __init__(self, value: float, t_min: float = 0.0, t_max: float = 1.0, kind: str = "constant"):
        if kind not in ("constant", "linear"):
            raise ValueError(f"scale kind must be 'constant' or 'linear', got {kind!r}")
        self.value, self.t_min, self.t_max, self.kind = float(value), float(t_min), float(t_max), kind

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        s = torch.full_like(t, self.value)
        if self.kind == "linear":
            s = s * (1 - t)
        return torch.where((t >= self.t_min) & (t <= self.t_max), s, torch.zeros_like(s))


class Energy:
    """E(z_t, t) per molecule, of the noised state. ``gradient(state, t, eps)`` returns
    ({field: gradient}, ok) with ok (M,) bool; the default differentiates ``energy`` with autograd
    with respect to the state's ``fields``."""

    name = "energy"
    fields = ("pos", "atom_type")

    def energy(self, state: MolState, t, eps=None) -> torch.Tensor:
        raise NotImplementedError

    def gradient(self, state: MolState, t, eps=None):
        with torch.enable_grad():
            leaves = {k: getattr(state, k).detach().requires_grad_(True) for k in self.fields}
            e = self.energy(state.replace(**leaves), t, eps)
            grads = torch.autograd.grad(e.sum(), tuple(leaves.values()), allow_unused=True)
        grads = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads)}
        # An infinite energy (overflow, a molecule outside the energy's domain) can come with a
        # finite gradient, which then means nothing: a failure, not a direction.
        ok = torch.isfinite(e.detach())
        self.last_reasons = [None if good else "non-finite energy" for good in ok.tolist()]
        return grads, ok


def _finite_molecules(batch, n, *tensors) -> torch.Tensor:
    """(M,) bool: every value of every (A, ...) tensor of the molecule is finite."""
    bad = torch.zeros(n, dtype=torch.long, device=batch.device)
    for v in tensors:
        bad.index_add_(0, batch, (~torch.isfinite(v).flatten(1).all(1)).long())
    return bad == 0


def _molecule_norm(values: dict, batch, n) -> torch.Tensor:
    """(M,) norm of each molecule's rows of every field together."""
    first = next(iter(values.values()))
    sq = torch.zeros(n, dtype=first.dtype, device=first.device)
    sq.index_add_(0, batch, reduce(add, [v.square().sum(1) for v in values.values()]))
    return sq.sqrt()


def check_clip(clip) -> None:
    if clip is not None and not float(clip) > 0:
        raise ValueError(f"clip must be a positive number or null, got {clip!r}")


def guided(eps_fn: Callable, sde, terms: list[tuple[Energy, Scale]], report: GuidanceReport | None = None,
           clip: float | None = None) -> Callable:
    """A denoiser for the samplers, ``fn(state, t) -> {field: eps}``: ``eps_fn`` plus the guidance
    of every (energy, scale), on the fields ``sde`` declares.

    ``clip``: each energy's guidance term is capped, per molecule and step, at ``clip`` times the
    norm of the unguided eps (a rescaling, so its direction and the zero CoM are kept). A sharp
    property model can give a molecule a gradient that one step turns into a jump it never comes
    back from; the cap bounds every step's push and counts the capped pairs in the report.
    None: no cap."""
    report = report if report is not None else GuidanceReport()
    check_clip(clip)

    def fn(state: MolState, t):
        batch, n = state.batch, state.n_mol
        eps = eps_fn(state, t)
        active = [(e, s(t)) for e, s in terms]
        active = [(e, w) for e, w in active if bool((w != 0).any())]
        if not active:
            return eps
        report.steps += 1
        # A molecule the model itself gives a non-finite eps (e.g. pushed off its domain by earlier
        # steps) cannot be helped here: counted once, not once per energy.
        alive = _finite_molecules(batch, n, *eps.values())
        report.record(BASE_MODEL, "non-finite eps", torch.nonzero(~alive).flatten().tolist())
        sigma = sde.sigma(t, batch).to(state.pos.dtype)
        # the cap's yardstick: the unguided eps, once per step whatever the number of energies
        limit = None if clip is None else clip * _molecule_norm(eps, batch, n)
        for energy, w in active:
            grads, ok = energy.gradient(state, t, dict(eps))
            reasons = getattr(energy, "last_reasons", None)  # per-molecule failure reasons, if the energy keeps them
            for m in torch.nonzero(alive & ~ok).flatten().tolist():
                report.record(energy.name, (reasons[m] if reasons and reasons[m] else "energy evaluation failed"), [m])
            grads = {k: grads[k] for k in sde.names}
            finite = _finite_molecules(batch, n, *grads.values())
            report.record(energy.name, "non-finite gradient", torch.nonzero(alive & ok & ~finite).flatten().tolist())
            use = ok & finite
            mask = use[batch, None]
            wa = sigma * w[batch, None].to(state.pos.dtype)
            terms_ = {}
            for spec in sde.fields:
                g = torch.where(mask, grads[spec.name], torch.zeros_like(grads[spec.name]))
                if spec.centred:  # zeroed before the centring, which mixes the atoms of a molecule
                    g = remove_mean(g, batch, n)
                terms_[spec.name] = wa * g
            if limit is not None:
                # factor < 1 only where the term exceeds the cap; a zero or non-finite term is left
                # as it is (the overflow check below handles the latter)
                term = _molecule_norm(terms_, batch, n)
                factor = limit / term
                factor = torch.where(torch.isfinite(term) & (term > 0) & (factor < 1), factor, torch.ones_like(factor))
                capped = alive & use & (factor < 1)
                report.clipped[energy.name] += int(capped.sum())
                terms_ = {k: v * factor[batch, None] for k, v in terms_.items()}
            moved = {k: eps[k] + terms_[k] for k in sde.names}
            # A finite gradient can still overflow once scaled and added: the molecule then keeps
            # the eps it had, never a non-finite one.
            fits = _finite_molecules(batch, n, *moved.values())
            report.record(energy.name, "guidance overflow", torch.nonzero(alive & use & ~fits).flatten().tolist())
            keep = (use & fits)[batch, None]
            eps = {k: torch.where(keep, moved[k], eps[k]) for k in sde.names}
        return eps

    fn.report = report
    return fn
