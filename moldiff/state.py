"""``MolState``: a batch of molecules as the bond model's data, noise processes, network, loss and
samplers all see it, one named field each.

Per atom: ``pos`` (A, 3) positions (zero centre of mass per molecule), ``atom_type`` (A,) and
``charge`` (A,) class indices (the Gaussian model keeps its continuous features, EDM's scaled
one-hot types and charge channel, as ``atom_type`` (A, F)), ``fixed`` (A,) bool (atoms a sampler must leave as they are, for
substructure-constrained design). Per unordered atom pair of a molecule (i < j, the full graph):
``bond`` (P,) class indices, 0 meaning no bond. The layout: ``batch`` (A,) molecule index,
``n_mol``, and ``pairs`` (P, 2) global atom indices with ``pair_batch`` (P,). ``context`` (M, K)
for a conditional model. A field the model does not use is None.

Pairs are stored once per unordered pair, in molecule order and then (i, j) lexicographic order,
so a bond is one value and cannot disagree with its mirror; ``directed_edges`` gives the network
both directions with each edge's pair index. Everything derived from sizes alone is computed
with vectorised index arithmetic, no loop over molecules.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

ATOM_FIELDS = ("pos", "atom_type", "charge", "fixed")
PAIR_FIELDS = ("bond",)


def pair_layout(batch: torch.Tensor, n_mol: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, 2) global atom indices (i < j) of every unordered pair within each molecule and
    (P,) their molecule index, molecule by molecule in (i, j) order. ``batch`` must be sorted."""
    counts = torch.bincount(batch, minlength=n_mol)
    starts = torch.cumsum(counts, 0) - counts
    per_mol = counts * (counts - 1) // 2
    P = int(per_mol.sum())
    if P == 0:
        z = torch.zeros(0, dtype=torch.long, device=batch.device)
        return z.view(0, 2), z
    pair_batch = torch.repeat_interleave(torch.arange(n_mol, device=batch.device), per_mol, output_size=P)
    k = torch.arange(P, device=batch.device) - (torch.cumsum(per_mol, 0) - per_mol)[pair_batch]  # rank within molecule
    n = counts[pair_batch]
    # invert k = i (2n - i - 1) / 2 + (j - i - 1) for the row i (float root, then an exact fix-up)
    nf = n.double()
    i = torch.floor(((2 * nf - 1) - torch.sqrt((2 * nf - 1) ** 2 - 8 * k.double())) / 2).long()
    row_start = lambda r: r * (2 * n - r - 1) // 2  # noqa: E731
    i = torch.where(row_start(i) > k, i - 1, i)
    i = torch.where(row_start(i + 1) <= k, i + 1, i)
    j = k - row_start(i) + i + 1
    base = starts[pair_batch]
    return torch.stack([base + i, base + j], 1), pair_batch


def pair_index(i_local: torch.Tensor, j_local: torch.Tensor, n: torch.Tensor, pair_start: torch.Tensor) -> torch.Tensor:
    """Global pair index of local atoms i < j in molecules of n atoms whose pairs start at ``pair_start``."""
    return pair_start + i_local * (2 * n - i_local - 1) // 2 + (j_local - i_local - 1)


@dataclass
class MolState:
    batch: torch.Tensor
    n_mol: int
    pos: torch.Tensor | None = None
    atom_type: torch.Tensor | None = None
    charge: torch.Tensor | None = None
    bond: torch.Tensor | None = None
    fixed: torch.Tensor | None = None
    context: torch.Tensor | None = None
    pairs_: torch.Tensor | None = None  # the pair layout, computed on first use (``pairs``)
    pair_batch_: torch.Tensor | None = None

    @property
    def pairs(self) -> torch.Tensor:
        """(P, 2) global atom indices i < j of every unordered pair, molecule by molecule."""
        if self.pairs_ is None:
            self.pairs_, self.pair_batch_ = pair_layout(self.batch.long(), self.n_mol)
        return self.pairs_

    @property
    def pair_batch(self) -> torch.Tensor:
        self.pairs
        return self.pair_batch_

    # --- layout -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.batch.device

    @property
    def n_atoms(self) -> torch.Tensor:
        return torch.bincount(self.batch, minlength=self.n_mol)

    def __len__(self) -> int:
        return self.n_mol

    def directed_edges(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(src, dst, pair)``: both directions of every pair, grouped by ``dst`` (what the
        fused kernels prefer), and the index of each edge's unordered pair."""
        i, j = self.pairs[:, 0], self.pairs[:, 1]
        src, dst = torch.cat([j, i]), torch.cat([i, j])
        pair = torch.arange(len(i), device=i.device).repeat(2)
        order = torch.argsort(dst * (int(self.batch.numel()) + 1) + src)
        return src[order], dst[order], pair[order]

    # --- fields -------------------------------------------------------------------------------
    def replace(self, **changes) -> "MolState":
        """A copy with some fields changed (the layout is shared, not recomputed)."""
        return replace(self, **changes)

    def to(self, device) -> "MolState":
        return MolState(**{f.name: (v.to(device) if isinstance(v, torch.Tensor) else v)
                           for f in fields(self) for v in [getattr(self, f.name)]})

    def take(self, names) -> dict[str, torch.Tensor]:
        """``{name: field}`` of the named fields: the state's values in the shape of a prediction
        (a denoiser returns one tensor per field it models)."""
        return {name: getattr(self, name) for name in names}

    def field_batch(self, name: str) -> torch.Tensor:
        """The molecule index of each item of field ``name`` (atoms or pairs)."""
        return self.pair_batch if name in PAIR_FIELDS else self.batch

    # --- fixed atoms (a fragment the molecule keeps) ----------------------------------------------
    def held(self) -> torch.Tensor:
        """(M,) bool: the molecules with at least one fixed atom (all False where ``fixed`` is None)."""
        out = torch.zeros(self.n_mol, dtype=torch.bool, device=self.device)
        if self.fixed is not None:
            out[self.batch[self.fixed.bool()]] = True
        return out

    def keep_fixed(self, old: "MolState") -> "MolState":
        """This state with the fixed atoms of ``old`` (positions, types, charges) and the pairs of
        two of them (bonds) as they are in ``old``; itself where nothing is fixed."""
        f = old.fixed
        if f is None or not bool(f.any()):
            return self
        changes = {}
        for name in ("pos", "atom_type", "charge", "bond"):
            value = getattr(self, name)
            if value is None:
                continue
            mask = f[self.pairs[:, 0]] & f[self.pairs[:, 1]] if name in PAIR_FIELDS else f
            changes[name] = torch.where(mask.view(-1, *([1] * (value.dim() - 1))), getattr(old, name), value)
        return self.replace(**changes)
