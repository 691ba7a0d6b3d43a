"""The bond model's network: an EGNN whose edges carry the noisy bond orders in, with heads that
return the clean molecule's estimate, field by field.

    inputs per atom:  [one-hot type, one-hot charge, t (, context)]
    inputs per edge:  d_ij, d0_ij and the one-hot noisy bond class of its pair (``EGNN`` with
                      ``edge_classes``: one more row of the fused first layer, not a GEMM)
    outputs:          pos  (A, 3)  x0 estimate, x_t + the EGNN's equivariant displacement
                      atom_type (A, K), charge (A, C): logits from the last layer's atom features
                      bond (P, B): logits per unordered pair from [h_i + h_j, h_i * h_j,
                      |x_i - x_j| of the output, the pair's noisy class embedding]

Self-conditioning (``self_condition=True``; Chen et al.'s analog bits, used by FlowMol3, Megalodon
and SemlaFlow): the network also takes its own previous estimate (``previous``, a prediction dict
or None): the softmaxed type and charge probabilities join each atom's input, the previous
most likely bond class of each pair joins the edge class (class = noisy class + B * (1 + previous
class), block 0 meaning "no previous estimate"; one row of the fused first layer as before, so
the step costs no more edge FLOPs), and the pair head sees the previous bond probabilities.
Positions are not fed back: an extra per-edge scalar would need a third weighted row in the fused
kernels' hand-written backward, and the bond classes already carry the geometry's decisions.

Fragment conditioning (``fragment_condition=True``; issue 30, as DiffLinker and FLOWR train): each
atom's input also carries ``state.fixed``, 1 for an atom of a fragment the molecule must keep (its
position, classes and the bonds among fixed atoms clean in the state, ``loss/fields.py``). A
molecule with fixed atoms lives in its fragment's frame, not at zero centre of mass, so its
position output is the EGNN's displacement as it is; molecules without fixed atoms keep the
zero-mean displacement of the unconditional model.

The pair head is symmetric in (i, j) by construction (sums and products), so a bond cannot get
two predictions; positions are equivariant and every other output invariant under rotations and
translations, because the EGNN's are and the pair head only sees invariants.
"""

from __future__ import annotations

import torch
from torch import nn

from moldiff.geometry import remove_mean
from moldiff.nn.egnn import EGNN
from moldiff.state import MolState


class BondEGNN(nn.Module):
    def __init__(self, n_types: int, n_charges: int, n_bonds: int, hidden: int = 128, layers: int = 4,
                 context_features: int = 0, self_condition: bool = False, fragment_condition: bool = False, **egnn):
        super().__init__()
        self.n_types, self.n_charges, self.n_bonds = int(n_types), int(n_charges), int(n_bonds)
        self.self_condition, self.fragment_condition = bool(self_condition), bool(fragment_condition)
        atom_in = (self.n_types + self.n_charges) * (2 if self.self_condition else 1) + int(self.fragment_condition)
        edge_classes = self.n_bonds * (self.n_bonds + 1) if self.self_condition else self.n_bonds
        self.egnn = EGNN(atom_in, hidden=hidden, layers=layers, out_features=hidden,
                         context_features=context_features, edge_classes=edge_classes, **egnn)
        self.type_head = nn.Linear(hidden, self.n_types)
        self.charge_head = nn.Linear(hidden, self.n_charges)
        self.bond_in = nn.Embedding(self.n_bonds, hidden)
        pair_in = 3 * hidden + 1 + (self.n_bonds if self.self_condition else 0)
        self.bond_head = nn.Sequential(nn.Linear(pair_in, hidden), nn.SiLU(), nn.Linear(hidden, self.n_bonds))

    def forward(self, state: MolState, t: torch.Tensor, context=None, previous: dict | None = None) -> dict[str, torch.Tensor]:
        """Clean-molecule estimates for ``state`` at per-molecule times ``t`` (M,); ``previous``:
        the network's last estimate for this state (self-conditioning), None for none yet."""
        if previous is not None and not self.self_condition:
            raise ValueError("this network was built without self_condition: it takes no previous estimate")
        x = state.pos
        h = [nn.functional.one_hot(state.atom_type.long(), self.n_types),
             nn.functional.one_hot(state.charge.long(), self.n_charges)]
        src, dst, pair = state.directed_edges()
        edge_class = state.bond[pair]
        extra_pair = []
        if self.self_condition:
            probs = self._previous_probs(state, previous)
            h += [probs["atom_type"], probs["charge"]]
            block = 0 if previous is None else 1 + probs["bond"].argmax(1)[pair]
            edge_class = edge_class + self.n_bonds * block
            extra_pair = [probs["bond"]]
        if self.fragment_condition:
            fixed = state.pos.new_zeros(len(state.batch)) if state.fixed is None else state.fixed.to(state.pos.dtype)
            h.append(fixed[:, None])
        h = torch.cat(h, 1).to(x.dtype)
        dx, feats = self.egnn(x, h, t, state.batch, state.n_mol, edges=(src, dst), context=context,
                              edge_class=edge_class, center=not self.fragment_condition)
        if self.fragment_condition:  # zero-mean displacement only for molecules without a fragment
            held = state.held()[state.batch, None]
            dx = torch.where(held, dx, remove_mean(dx, state.batch, state.n_mol))
        x0 = x + dx
        i, j = state.pairs[:, 0], state.pairs[:, 1]
        hi, hj = feats[i], feats[j]
        dist = (x0[i] - x0[j]).norm(dim=1, keepdim=True)
        pair_in = torch.cat([hi + hj, hi * hj, self.bond_in(state.bond.long()).to(hi.dtype), dist.to(hi.dtype)]
                            + [e.to(hi.dtype) for e in extra_pair], 1)
        return {"pos": x0, "atom_type": self.type_head(feats), "charge": self.charge_head(feats),
                "bond": self.bond_head(pair_in)}

    def _previous_probs(self, state: MolState, previous: dict | None) -> dict[str, torch.Tensor]:
        """Class probabilities of the previous estimate (no gradient through it); zeros when there is none."""
        sizes = {"atom_type": (len(state.batch), self.n_types), "charge": (len(state.batch), self.n_charges),
                 "bond": (len(state.pairs), self.n_bonds)}
        if previous is None:
            return {k: state.pos.new_zeros(shape) for k, shape in sizes.items()}
        return {k: torch.softmax(previous[k].detach().float(), dim=1).to(state.pos.dtype) for k in sizes}


def add_self_conditioning(state: dict[str, torch.Tensor], n_types: int, n_charges: int, n_bonds: int) -> dict[str, torch.Tensor]:
    """A state dict for the self-conditioned network made from one of the same network without it
    (a warm start: ``train.py init_from=<bond checkpoint> model.self_condition=true``). The new
    inputs start inert: the previous type / charge probabilities and the pair head's previous bond
    probabilities get zero weights, and every previous-bond block of the edge classes copies the
    noisy class's columns, so the new network predicts exactly what the old one did, with or
    without a previous estimate, and learns from there. Keys may carry any prefix (net., ema.module.)."""
    out = dict(state)
    atom_in = n_types + n_charges
    for key, w in state.items():
        if key.endswith("egnn.embedding.weight"):  # [types, charges, t, context] -> [types, charges, previous, t, context]
            out[key] = torch.cat([w[:, :atom_in], w.new_zeros(w.shape[0], atom_in), w[:, atom_in:]], 1)
        elif key.endswith(("edge_mlp.0.weight", "coord_mlp.0.weight")):  # [h_i, h_j, d, d0, class]: class + B * block
            classes = w[:, -n_bonds:]
            out[key] = torch.cat([w[:, :-n_bonds]] + [classes] * (n_bonds + 1), 1)
        elif key.endswith("bond_head.0.weight"):  # [..., previous bond probabilities]
            out[key] = torch.cat([w, w.new_zeros(w.shape[0], n_bonds)], 1)
    return out


def add_fragment_input(state: dict[str, torch.Tensor], atom_in: int) -> dict[str, torch.Tensor]:
    """A state dict for the fragment-conditioned network made from one of the same network without
    it (``train.py init_from=<bond checkpoint> model.fragment_condition=true``): the fixed-atom flag's
    input column, after the ``atom_in`` class inputs, starts at zero, so molecules without a fragment
    get exactly the old predictions. Keys may carry any prefix (net., ema.module.)."""
    out = dict(state)
    for key, w in state.items():
        if key.endswith("egnn.embedding.weight"):  # [classes, t, context] -> [classes, fixed, t, context]
            out[key] = torch.cat([w[:, :atom_in], w.new_zeros(w.shape[0], 1), w[:, atom_in:]], 1)
    return out


def predict(denoise_fn, state: MolState, t: torch.Tensor, previous: dict | None = None) -> dict[str, torch.Tensor]:
    """``denoise_fn``'s clean estimate; a self-conditioned network also gets its previous one
    (any other denoiser, e.g. a test's oracle, is called as ``denoise_fn(state, t)``)."""
    if getattr(denoise_fn, "self_condition", False):
        return denoise_fn(state, t, previous=previous)
    return denoise_fn(state, t)
