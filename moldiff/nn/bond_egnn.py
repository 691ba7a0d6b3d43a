"""The bond model's network: an EGNN whose edges carry the noisy bond orders in, with heads that
return the clean molecule's estimate, field by field.

    inputs per atom:  [one-hot type, one-hot charge, t (, context)]
    inputs per edge:  d_ij, d0_ij and the one-hot noisy bond class of its pair (``EGNN`` with
                      ``edge_classes``: one more row of the fused first layer, not a GEMM)
    outputs:          pos  (A, 3)  x0 estimate, x_t + the EGNN's equivariant displacement
                      atom_type (A, K), charge (A, C): logits from the last layer's atom features
                      bond (P, B): logits per unordered pair from [h_i + h_j, h_i * h_j,
                      |x_i - x_j| of the output, the pair's noisy class embedding]

The pair head is symmetric in (i, j) by construction (sums and products), so a bond cannot get
two predictions; positions are equivariant and every other output invariant under rotations and
translations, because the EGNN's are and the pair head only sees invariants.
"""

from __future__ import annotations

import torch
from torch import nn

from moldiff.nn.egnn import EGNN
from moldiff.state import MolState


class BondEGNN(nn.Module):
    def __init__(self, n_types: int, n_charges: int, n_bonds: int, hidden: int = 128, layers: int = 4,
                 context_features: int = 0, **egnn):
        super().__init__()
        self.n_types, self.n_charges, self.n_bonds = int(n_types), int(n_charges), int(n_bonds)
        self.egnn = EGNN(self.n_types + self.n_charges, hidden=hidden, layers=layers, out_features=hidden,
                         context_features=context_features, edge_classes=self.n_bonds, **egnn)
        self.type_head = nn.Linear(hidden, self.n_types)
        self.charge_head = nn.Linear(hidden, self.n_charges)
        self.bond_in = nn.Embedding(self.n_bonds, hidden)
        self.bond_head = nn.Sequential(nn.Linear(3 * hidden + 1, hidden), nn.SiLU(), nn.Linear(hidden, self.n_bonds))

    def forward(self, state: MolState, t: torch.Tensor, context=None) -> dict[str, torch.Tensor]:
        """Clean-molecule estimates for ``state`` at per-molecule times ``t`` (M,)."""
        x = state.pos
        h = torch.cat([nn.functional.one_hot(state.atom_type.long(), self.n_types),
                       nn.functional.one_hot(state.charge.long(), self.n_charges)], 1).to(x.dtype)
        src, dst, pair = state.directed_edges()
        dx, feats = self.egnn(x, h, t, state.batch, state.n_mol, edges=(src, dst), context=context,
                              edge_class=state.bond[pair])
        x0 = x + dx
        i, j = state.pairs[:, 0], state.pairs[:, 1]
        hi, hj = feats[i], feats[j]
        dist = (x0[i] - x0[j]).norm(dim=1, keepdim=True)
        pair_in = torch.cat([hi + hj, hi * hj, self.bond_in(state.bond.long()).to(hi.dtype), dist.to(hi.dtype)], 1)
        return {"pos": x0, "atom_type": self.type_head(feats), "charge": self.charge_head(feats),
                "bond": self.bond_head(pair_in)}
