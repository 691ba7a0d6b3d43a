"""Random fragments of training molecules (issue 30): which atoms a fragment-conditioned bond model
sees clean, as a user's fragment, while it learns to make the rest.

A share of the molecules get a fragment: one connected piece of the heavy-atom bond graph, or two
(a linker's two sides), grown from random seed atoms one bonded neighbour at a time until it holds
a random 30-90 % of the heavy atoms; hydrogens follow the heavy atom they are bonded to. At least
one heavy atom stays free, so every fragment leaves something to make, and molecules with fewer
than two heavy atoms get none. Elaboration (a few peripheral atoms free), scaffold decoration and
linking (a middle piece free) are all shapes this draws. Everything is vectorised over the batch:
one round adds at most one atom to each molecule's fragment, so a round costs a few tensor ops
and a batch as many rounds as its largest fragment has atoms.
"""

from __future__ import annotations

import torch

from moldiff.geometry import segment_sum
from moldiff.state import MolState

SIZE_RANGE = (0.3, 0.9)  # the fragment's share of the heavy atoms
TWO_PIECES = 0.3  # share of fragments grown from two seeds (linking)


def _per_molecule_max(values: torch.Tensor, batch: torch.Tensor, n: int) -> torch.Tensor:
    return torch.full((n,), -1.0, dtype=values.dtype, device=values.device).scatter_reduce(0, batch, values, "amax")


def random_fragments(state: MolState, share: float, hydrogen: int | None, generator=None) -> torch.Tensor:
    """(A,) bool: fixed atoms for ``share`` of the molecules of ``state`` (which needs ``bond`` and
    ``atom_type`` class indices; ``hydrogen`` the class of H, None for none)."""
    b, n, device = state.batch, state.n_mol, state.device
    heavy = torch.ones_like(b, dtype=torch.bool) if hydrogen is None else state.atom_type != hydrogen
    n_heavy = segment_sum(heavy.double()[:, None], b, n)[:, 0]
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64, device=device)
    chosen = (u[:, 0] < share) & (n_heavy >= 2)
    lo, hi = SIZE_RANGE
    target = torch.clamp(torch.floor((lo + (hi - lo) * u[:, 1]) * n_heavy + 0.5), min=1.0)
    target = torch.minimum(target, n_heavy - 1)
    # seeds: the heavy atom with the highest random score per molecule, and the second for two pieces
    score = torch.where(heavy, torch.rand(len(b), generator=generator, dtype=torch.float64, device=device), -1.0)
    first = score == _per_molecule_max(score, b, n)[b]
    second_score = torch.where(first, -1.0, score)
    second = (second_score == _per_molecule_max(second_score, b, n)[b]) & (second_score >= 0)
    two = (u[:, 2] < TWO_PIECES) & (target >= 2)
    fixed = chosen[b] & heavy & (first | (second & two[b]))
    i, j = state.pairs[:, 0], state.pairs[:, 1]
    bonded = (state.bond > 0) & heavy[i] & heavy[j]
    bi, bj = i[bonded], j[bonded]
    for _ in range(int(n_heavy.max().item()) if len(b) else 0):
        count = segment_sum(fixed.double()[:, None], b, n)[:, 0]
        need = chosen & (count < target)
        if not bool(need.any()):
            break
        frontier = torch.zeros_like(fixed)
        frontier[bi[fixed[bj]]] = True
        frontier[bj[fixed[bi]]] = True
        frontier &= ~fixed & need[b]
        if not bool(frontier.any()):
            break
        pick = torch.where(frontier, torch.rand(len(b), generator=generator, dtype=torch.float64, device=device), -1.0)
        fixed |= frontier & (pick == _per_molecule_max(pick, b, n)[b])
    # hydrogens share their heavy atom's fate
    h_bond = (state.bond > 0) & (heavy[i] != heavy[j])
    hi_, hj_ = i[h_bond], j[h_bond]
    fixed[hi_] |= fixed[hj_] & ~heavy[hi_]
    fixed[hj_] |= fixed[hi_] & ~heavy[hj_]
    return fixed
