"""Fused CPU kernels for the EGNN's per-edge MLPs (the hot path of training and sampling).

Nearly all of the EGNN's FLOPs are in its per-edge MLPs, evaluated on every edge of every layer.
This module makes them fast (``docs/performance.md`` has the figures):

* Sparse edges: per-molecule fully connected graphs as flat ``(src, dst)`` lists, sum N (N - 1)
  edges per batch instead of EDM's dense B x N_max^2 pairs with masks. ``Graph`` derives the
  index tensors the kernels need once per forward and every layer reuses them.
* Split first layer: ``W1 [h_i, h_j, d, d0] + b1 = P_i + Q_j + d w_d + d0 w_0`` with per-atom
  projections ``P = h W1a^T + b1``, ``Q = h W1b^T`` (A x H, cheap). Per edge this is a weighted
  sum of four rows of the table [P; Q; w_d; w_0], done by one ``embedding_bag``: no (E, 2H + 2)
  concatenation, two thirds fewer edge-MLP FLOPs, and no pathological K=2 GEMM.
* Hand-written backward: the chain pre-activation -> SiLU -> Linear -> SiLU -> attention-weighted
  sum over incoming edges (or -> the coordinate weight phi) is one ``torch.autograd.Function``
  (``EdgeMLP``). Sums over incoming / outgoing edges are ``embedding_bag`` segment sums on
  dst-grouped edges (no temporaries, no atomics), small-N products avoid MKL's slow skinny GEMMs,
  the SiLU backward runs in place, and no (E, H) tensor is materialised twice.
* Products are plain ``F.linear`` in training: oneDNN's private ``mkldnn._linear_pointwise``
  keeps per-shape state that grew a training run's memory (every batch has a new edge count).
  Without gradients (sampling, likelihoods) the float32 edge products go through oneDNN with the
  SiLU / sigmoid fused in: a sampling run keeps one edge count per batch for all its steps, so
  the state stays small, and oneDNN is faster there (``docs/performance.md``).
* On CUDA the same kernels run, except that the sums over the whole edge set (weight gradients of
  the attention / phi layer and of w_d, w_0) are plain products there: as one ``embedding_bag``
  bag they are serial per feature on a GPU, which made a 4 x 128 training step of 24 molecules of
  181 atoms 4.8 s instead of 62 ms on an H200 (docs/performance.md, "GEOM scale").
* Mixed precision: with ``Graph.compute_dtype`` (e.g. bfloat16 under ``torch.autocast``) the
  per-edge chains and edge tables run in that dtype; outputs and gradients come back in the
  inputs' dtype.

Why its own kernels rather than torch-geometric's ``MessagePassing``: ``message`` receives
per-edge gathered node features, so an EGNN layer written on it materialises the (E, 2H + 2)
concatenation [h_i, h_j, d, d0], runs the full first layer on it, and leaves the backward to
generic autograd (gather gradients as scatters, a gradient for the concatenation). The split
first layer and the hand-written backward are what make this network fast on CPU, and its
graphs need no general sparse machinery: small, per-molecule and fully connected.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

__all__ = ["EdgeMLP", "Graph", "PlainGraph", "edge_mlp", "edge_table"]


def _onednn_available() -> bool:
    """Whether oneDNN's fused linear exists in this torch build and agrees with ``F.linear``."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        x, w, b = torch.randn(3, 4), torch.randn(2, 4), torch.randn(2)
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        return bool(torch.allclose(y, F.linear(x, w, b), atol=1e-5))
    except Exception:  # a private op: missing or broken in some builds, then plain F.linear
        return False


ONEDNN = _onednn_available()


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, act: str = "none",
            inference: bool = False) -> torch.Tensor:
    """``act(x @ w.T + b)`` (act: "none", "swish" = SiLU, "sigmoid"), activations in place. No
    autograd. ``inference``: float32 on CPU goes through oneDNN with the activation fused."""
    if inference and ONEDNN and x.dtype == torch.float32 and x.device.type == "cpu" and x.shape[0] > 0:
        return torch.ops.mkldnn._linear_pointwise(x, w.contiguous(), b, act, [], "")
    y = F.linear(x, w, b)
    if act == "swish":
        return F.silu(y, inplace=True)
    if act == "sigmoid":
        return y.sigmoid_()
    return y


class Graph:
    """Edges (j -> i as ``src`` -> ``dst``) of one forward pass plus the index tensors the fused
    kernels reuse in every layer."""

    def __init__(self, src: torch.Tensor, dst: torch.Tensor, n_atoms: int, compute_dtype: torch.dtype | None = None,
                 edge_class: torch.Tensor | None = None, n_classes: int = 0):
        A, E = n_atoms, src.numel()
        device = src.device
        self.src, self.dst, self.n_atoms, self.n_edges = src, dst, A, E
        self.compute_dtype = compute_dtype  # the per-edge MLPs' dtype under mixed precision; None: the inputs'
        self.dst_sorted = E < 2 or bool((dst[1:] >= dst[:-1]).all())
        deg = torch.bincount(dst, minlength=A)
        self.in_degree = deg
        self.arange = torch.arange(E, device=device)
        self.dst_ptr = torch.cumsum(deg, 0) - deg
        # edges grouped by source, for the sums over outgoing edges in the backward pass
        self.src_perm = torch.argsort(src, stable=True)
        deg_src = torch.bincount(src, minlength=A)
        self.src_ptr = torch.cumsum(deg_src, 0) - deg_src
        # rows of the table [P; Q; w_d; w_0] that make up each edge's first-layer pre-activation
        self.bag4 = torch.stack([dst, src + A, torch.full_like(dst, 2 * A), torch.full_like(dst, 2 * A + 1)], 1)
        # categorical edge inputs (a bond model's noisy bond orders): one more table row per edge,
        # W1's column for the edge's class, so a one-hot edge feature costs a gather, not a GEMM
        self.edge_class, self.n_classes = edge_class, int(n_classes)
        if edge_class is not None:
            self.bag4 = torch.cat([self.bag4, (2 * A + 2 + edge_class.long())[:, None]], 1)
        self.bag2 = torch.cat([self.arange, self.arange])
        self.bag2_ptr = torch.tensor([0, E], device=device)
        self.zero_ptr = torch.zeros(1, dtype=torch.long, device=device)
        # sums over all edges as one or two bags are fast on CPU but serial per feature on CUDA
        # (40x slower training steps on an H200): there they are plain products
        self.bags_for_totals = device.type == "cpu"

    def sum_into_dst(self, v: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """(A, H): sum of ``weight_e * v_e`` over the edges into each atom."""
        if self.dst_sorted:
            return F.embedding_bag(self.arange, v, self.dst_ptr, mode="sum", per_sample_weights=weight)
        if weight is not None:
            v = v * weight[:, None]
        return v.new_zeros((self.n_atoms, v.shape[1])).index_add_(0, self.dst, v)

    def sum_into_src(self, v: torch.Tensor) -> torch.Tensor:
        """(A, H): sum of ``v_e`` over the edges out of each atom."""
        return F.embedding_bag(self.src_perm, v, self.src_ptr, mode="sum")

    def total(self, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(H,): sum over all edges of ``weight_e * v_e`` (a skinny GEMV without MKL)."""
        if not self.bags_for_totals:
            return weight @ v
        return F.embedding_bag(self.arange, v, self.zero_ptr, mode="sum", per_sample_weights=weight)[0]

    def class_sums(self, v: torch.Tensor) -> torch.Tensor:
        """(n_classes, H): sum of ``v_e`` over the edges of each edge class."""
        return v.new_zeros((self.n_classes, v.shape[1])).index_add_(0, self.edge_class, v)

    def totals2(self, v: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        """(2, H): sums over all edges of ``w1_e * v_e`` and of ``w2_e * v_e``."""
        if not self.bags_for_totals:
            return torch.stack([w1, w2]) @ v
        return F.embedding_bag(self.bag2, v, self.bag2_ptr, mode="sum", per_sample_weights=torch.cat([w1, w2]))


class PlainGraph:
    """Just ``src`` and ``dst``: what the plain (unfused) ops need."""

    def __init__(self, src: torch.Tensor, dst: torch.Tensor):
        self.src, self.dst = src, dst


class EdgeMLP(torch.autograd.Function):
    """The per-edge chain of one GCL (``mode="att"``/``"sum"``) or coordinate MLP (``"phi"``).

    Inputs: ``table`` (2A + 2, H) = [P; Q; w_d; w_0] (first layer split per atom, bias in P),
    ``d``, ``d0`` (E,) edge attributes, ``w2``, ``b2`` the second layer, ``wo`` (1, H), ``bo`` (1,)
    or None the attention / phi layer. Output: (A, H) attention-weighted sums of m_ij over the
    edges into each atom, or phi (E,).

    Mixed precision (``graph.compute_dtype``, e.g. bfloat16): inputs are cast once on entry, the
    whole chain and its backward run in that dtype (bf16 GEMMs accumulate in float32),
    and the output and every gradient are cast back to the inputs' dtype, so the residual stream,
    positions, parameters and optimizer never leave float32.
    """

    @staticmethod
    def forward(ctx, table, d, d0, w2, b2, wo, bo, graph: Graph, mode: str):
        ctx.dtypes = [None if v is None else v.dtype for v in (table, d, d0, w2, b2, wo, bo)]
        out_dtype = d.dtype  # the coordinates' dtype, that of the residual stream too
        table, d, d0, w2, b2, wo, bo = _cast((table, d, d0, w2, b2, wo, bo), graph.compute_dtype)
        g = _first_layer(table, d, d0, graph)  # (E, H)
        a = F.silu(g)
        z = _linear(a, w2, b2)
        m = F.silu(z)
        s = None
        if mode == "phi":
            out = _linear(m, wo)[:, 0]
        elif mode == "att":
            s = _linear(m, wo, bo, "sigmoid")[:, 0]
            out = graph.sum_into_dst(m, s)
        else:
            out = graph.sum_into_dst(m)
        ctx.save_for_backward(table, d, d0, w2, wo, g, a, z, m, s)
        ctx.graph, ctx.mode = graph, mode
        return out.to(out_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        table, d, d0, w2, wo, g, a, z, m, s = ctx.saved_tensors
        graph, mode = ctx.graph, ctx.mode
        dout = dout.to(g.dtype)
        A = graph.n_atoms
        dwo = dbo = None
        if mode == "phi":
            dm = torch.outer(dout, wo[0])
            dwo = graph.total(m, dout)[None]
        else:
            dm = F.embedding(graph.dst, dout)  # (E, H) gradient of each message
            if mode == "att":
                dpre = torch.linalg.vecdot(dm, m)  # d out / d s, per edge
                dpre.mul_(s * (1 - s))
                dm.mul_(s[:, None]).addcmul_(dpre[:, None], wo)  # (addr_ is 5x slower in bfloat16)
                dwo = graph.total(m, dpre)[None]
                dbo = dpre.sum()[None]
        dz = torch.ops.aten.silu_backward.grad_input(dm, z, grad_input=dm)  # in place: fewer fresh pages
        dw2 = dz.t() @ a
        db2 = dz.sum(0)
        da = _linear(dz, w2.t())
        del dm, dz
        dg = torch.ops.aten.silu_backward.grad_input(da, g, grad_input=da)
        we = table[2 * A : 2 * A + 2]  # (2, H)
        parts = [graph.sum_into_dst(dg), graph.sum_into_src(dg), graph.totals2(dg, d, d0)]
        if graph.edge_class is not None:
            parts.append(graph.class_sums(dg))
        dtable = torch.cat(parts)
        dd = dd0 = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dd, dd0 = _linear(dg, we).unbind(1)  # one pass over dg for both edge attributes
        grads = (dtable, dd, dd0, dw2, db2, dwo, dbo)
        return (*(None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.dtypes)), None, None)


def _cast(tensors, dtype):
    return tuple(t if t is None or dtype is None else t.to(dtype) for t in tensors)


def edge_table(lin: nn.Linear, h: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """[h W1a^T + b1; h W1b^T; w_d; w_0 (; w_class...)] (2A + 2 [+ classes], H) for the split first
    layer of an edge MLP, in ``dtype`` (mixed precision) or h's."""
    H = h.shape[1]
    w, b = lin.weight, lin.bias
    if dtype is not None:
        h, w, b = h.to(dtype), w.to(dtype), b.to(dtype)
    return torch.cat([torch.addmm(b, h, w[:, :H].t()), h @ w[:, H : 2 * H].t(), w[:, 2 * H :].t()])


def _first_layer(table, d, d0, graph: Graph) -> torch.Tensor:
    """(E, H) pre-activations P_dst + Q_src + d w_d + d0 w_0: one embedding_bag, four rows per edge."""
    one = torch.ones_like(d)
    cols = [one, one, d, d0] + ([one] if graph.edge_class is not None else [])
    psw = torch.stack(cols, 1).detach()
    # detached: with a grad-requiring weight embedding_bag takes a much slower path
    return F.embedding_bag(graph.bag4, table.detach(), mode="sum", per_sample_weights=psw)


def _edge_mlp_inference(table, d, d0, w2, b2, graph: Graph) -> torch.Tensor:
    g = _first_layer(table, d, d0, graph)
    return _linear(F.silu(g, inplace=True), w2, b2, "swish", inference=True)


def edge_mlp(table, d, d0, w2, b2, wo, bo, graph: Graph, mode: str) -> torch.Tensor:
    """``EdgeMLP`` when a gradient is needed, else the same maths with in-place activations."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (table, d, d0, w2, b2, wo, bo)):
        return EdgeMLP.apply(table, d, d0, w2, b2, wo, bo, graph, mode)
    dtype = d.dtype
    table, d, d0, w2, b2, wo, bo = _cast((table, d, d0, w2, b2, wo, bo), graph.compute_dtype)
    m = _edge_mlp_inference(table, d, d0, w2, b2, graph)
    if mode == "phi":
        out = _linear(m, wo, inference=True)[:, 0]
    elif mode == "att":
        out = graph.sum_into_dst(m, _linear(m, wo, bo, "sigmoid", inference=True)[:, 0])
    else:
        out = graph.sum_into_dst(m)
    return out.to(dtype)
