"""Edge lists for flat batches of molecules, in pure torch (no torch_cluster / pyg-lib).

A batch is ``x`` (A, 3) positions and ``batch`` (A,) the molecule index of every atom (see
``moldiff.geometry``). Edges are returned as ``(src, dst)``, two (E,) int64 tensors: a message
flows from atom ``src[e]`` (j) to atom ``dst[e]`` (i), PyG's ``source_to_target`` convention.
Both builders return edges grouped by ``dst`` (all edges into one atom are contiguous), which
makes the gathers and ``index_add_`` scatters of message passing walk memory in order.

``fully_connected_edges`` depends only on the molecule sizes, so callers that evaluate a network
many times on the same batch (a sampler: hundreds of steps) should build the edges once and pass
them in (``forward(..., edges=(src, dst))`` of ``EGNN`` or ``E3NNNet``; ``build_edges`` gives each
network's own graph).
"""

from __future__ import annotations

import torch

__all__ = ["fully_connected_edges", "radius_graph"]


def _empty_edges(device) -> tuple[torch.Tensor, torch.Tensor]:
    e = torch.zeros(0, dtype=torch.long, device=device)
    return e, e.clone()


def _sort_permutation(batch: torch.Tensor) -> torch.Tensor | None:
    """Permutation that makes ``batch`` non-decreasing, or None if it already is."""
    if batch.numel() < 2 or bool((batch[1:] >= batch[:-1]).all()):
        return None
    return torch.argsort(batch, stable=True)


def fully_connected_edges(batch: torch.Tensor, n_mol: int | None = None, loop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (j -> i), i != j (i == j too if ``loop``), within each molecule.

    ``batch`` (A,) long molecule index (atoms of a molecule need not be contiguous); ``n_mol`` the
    number of molecules (inferred if None). Returns ``(src, dst)`` with sum_m N_m (N_m - 1) edges
    (N_m^2 with loops), grouped by ``dst``; for a sorted ``batch`` they are in (dst, src)
    lexicographic order. Built from offsets in O(E) vectorised work, no loop over molecules.
    """
    batch = batch.long()
    device = batch.device
    A = batch.numel()
    if A == 0:
        return _empty_edges(device)
    counts = torch.bincount(batch, minlength=n_mol or 0)
    perm = _sort_permutation(batch)
    b = batch if perm is None else batch[perm]
    starts = torch.cumsum(counts, 0) - counts  # first (sorted) atom of each molecule
    atom_start = starts[b]  # (A,)
    local = torch.arange(A, device=device) - atom_start  # index of each atom within its molecule
    deg = counts[b] if loop else counts[b] - 1  # edges into each atom
    E = int(deg.sum())
    if E == 0:
        return _empty_edges(device)
    dst = torch.repeat_interleave(torch.arange(A, device=device), deg, output_size=E)
    edge_start = torch.cumsum(deg, 0) - deg
    p = torch.arange(E, device=device) - edge_start[dst]  # rank of the edge among those into dst
    if not loop:
        p += p >= local[dst]  # skip the atom itself
    src = atom_start[dst] + p
    if perm is not None:
        src, dst = perm[src], perm[dst]
    return src, dst


def radius_graph(
    x: torch.Tensor,
    r: float,
    batch: torch.Tensor | None = None,
    max_num_neighbors: int | None = None,
    loop: bool = False,
    chunk_size: int = 1 << 21,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges j -> i for atoms of the same molecule with |x_i - x_j| < r.

    The test is ``((x_i - x_j) ** 2).sum() < r ** 2`` in ``x``'s dtype. Self-loops (i -> i) are
    included only if ``loop``. Returns ``(src, dst)`` sorted by (dst, src).

    ``max_num_neighbors``: keep, for every target i, only its ``max_num_neighbors`` nearest sources
    j (smallest distance; ties broken by the smaller source index). A self-loop has distance 0, so
    with ``loop=True`` it counts as one of the neighbours and is always kept. (Unlike PyG, whose
    choice among too many neighbours is arbitrary, the result is deterministic and permutation
    equivariant up to exact ties.)

    Algorithm: cell list. Atoms are binned into cubic cells of side >= r per molecule, cells are
    keyed by one int64 (molecule, cx, cy, cz) and sorted; every atom looks up its 27 neighbouring
    cells with ``searchsorted``. Work and memory are O(A * atoms per 27 cells), not O(sum N^2);
    candidate pairs are processed in chunks of at most ``chunk_size`` (plus one row) to bound
    memory on large molecules. No Python loop over molecules.
    """
    device = x.device
    A = x.shape[0]
    if batch is None:
        batch = torch.zeros(A, dtype=torch.long, device=device)
    batch = batch.long()
    if A == 0 or not r > 0:
        return _empty_edges(device)
    xd = x.detach()
    if not bool(torch.isfinite(xd).all()):
        raise ValueError("radius_graph: positions must be finite")
    r = float(r)
    M = int(batch.max()) + 1

    # --- cells: side >= r (1e-5 margin against rounding), capped so the int64 key cannot overflow
    x64 = xd.to(torch.float64)
    idx3 = batch[:, None].expand(-1, 3)
    lo = torch.full((M, 3), float("inf"), dtype=torch.float64, device=device).scatter_reduce_(0, idx3, x64, "amin")
    hi = torch.full((M, 3), float("-inf"), dtype=torch.float64, device=device).scatter_reduce_(0, idx3, x64, "amax")
    span = float((hi - lo).max())
    axis_bits = (62 - M.bit_length()) // 3
    max_cells = (1 << axis_bits) - 3  # one empty cell of padding on each side
    side = max(r * (1 + 1e-5), span / max_cells * (1 + 1e-6))
    cell = torch.floor((x64 - lo[batch]) / side).long() + 1  # in [1, D - 2] on every axis
    dims = cell.max(0).values + 2
    D1, D2 = int(dims[1]), int(dims[2])
    key = ((batch * int(dims[0]) + cell[:, 0]) * D1 + cell[:, 1]) * D2 + cell[:, 2]
    skey, order = torch.sort(key)

    # --- the 27 neighbouring cells of every atom (padding keeps them inside its molecule's block).
    # Work in cell-sorted atom order so that the gathers below touch memory nearly in order.
    xs = xd[order]
    d = torch.arange(-1, 2, device=device)
    shifts = ((d[:, None, None] * D1 + d[None, :, None]) * D2 + d[None, None, :]).reshape(-1)  # (27,)
    nkey = (skey[:, None] + shifts[None, :]).reshape(-1)  # (A * 27,), row = sorted atom * 27 + shift
    first = torch.searchsorted(skey, nkey, side="left")
    cnt = torch.searchsorted(skey, nkey, side="right") - first
    cum = torch.cumsum(cnt, 0)
    total = int(cum[-1])

    srcs, dsts, d2s = [], [], []
    R = nkey.numel()
    a = done = 0
    while done < total:
        b = int(torch.searchsorted(cum, done + chunk_size, side="right"))
        b = min(max(b, a + 1), R)
        c = cnt[a:b]
        n = int(cum[b - 1]) - done
        if n > 0:
            row = torch.repeat_interleave(torch.arange(a, b, device=device), c, output_size=n)
            pos = torch.arange(done, done + n, device=device) - (cum[row] - cnt[row]) + first[row]  # sorted src
            row = torch.div(row, 27, rounding_mode="floor")  # sorted dst
            d2 = (xs[row] - xs[pos]).square().sum(1)
            keep = d2 < r * r
            if not loop:
                keep &= pos != row
            keep = keep.nonzero().squeeze(1)
            srcs.append(pos[keep])
            dsts.append(row[keep])
            d2s.append(d2[keep])
        a, done = b, done + n
    if not srcs:
        return _empty_edges(device)
    src, dst, d2 = order[torch.cat(srcs)], order[torch.cat(dsts)], torch.cat(d2s)

    if max_num_neighbors is not None:
        k = int(max_num_neighbors)
        # order by (dst, d2, src): stable sorts from the least significant key
        o = torch.argsort(src, stable=True)
        o = o[torch.argsort(d2[o], stable=True)]
        o = o[torch.argsort(dst[o], stable=True)]
        src, dst = src[o], dst[o]
        deg = torch.bincount(dst, minlength=A)
        rank = torch.arange(dst.numel(), device=device) - (torch.cumsum(deg, 0) - deg)[dst]
        keep = rank < k
        src, dst = src[keep], dst[keep]

    o = torch.argsort(dst * A + src)
    return src[o], dst[o]
