"""EGNN (Satorras et al. 2021) as EDM's ``EGNN_dynamics`` uses it, on flat sparse batches.

The network maps noisy positions ``x`` (A, 3), features ``h`` (A, F) and the diffusion time to
``eps_x`` (A, 3), E(3)-equivariant with zero centre of mass per molecule, and ``eps_h`` (A, F),
invariant. Architecture (EDM's ``egnn_new.EGNN`` with ``inv_sublayers=1``, ``sin_embedding=False``):

    h = Linear(F [+ 1 for t] -> H)(h)
    d0_ij = |x_i - x_j|^2                                     (initial distances, edge attribute)
    per layer l = 1..L:
        d_ij   = |x_i - x_j|^2,  u_ij = (x_i - x_j) / (sqrt(d_ij + 1e-8) + norm_constant)
        m_ij   = SiLU(W2 SiLU(W1 [h_i, h_j, d_ij, d0_ij] + b1) + b2)
        m_ij  *= sigmoid(w_a . m_ij + b_a)                                  (attention)
        h_i   += Wn2 SiLU(Wn1 [h_i, sum_j m_ij / Z] + bn1) + bn2
        phi_ij = w3 . SiLU(V2 SiLU(V1 [h_i, h_j, d_ij, d0_ij] + c1) + c2)   (with the updated h)
        x_i   += sum_j u_ij * (coords_range / L) * tanh(phi_ij) / Z
    eps_x = remove_mean(x_L - x),  eps_h = Linear(H -> F)(h)

with Z = ``normalization_factor`` (``aggregation="sum"``) or the in-degree (``"mean"``). Module
and parameter names and shapes follow EDM's (one ``nn.Linear`` over the concatenation
``[h_i, h_j, d, d0]``), so its weights map one to one; EDM's output column for t is not produced
(it drops it anyway). ``normalization_factor`` defaults to 1, the value EDM's QM9 training passes
(its ``EGNN`` class default of 100 is not what its published models used).

How it is made fast (CPU; ``benchmarks/bench_egnn.py`` has the numbers):

* Sparse edge lists: sum N (N - 1) edges per batch (~20k for 64 QM9 molecules) instead of EDM's
  dense B x N_max^2 (54k) with masks; built once per forward and shared by all layers, or passed
  in by a sampler (``edges=``).
* The first layer of each edge MLP is split: ``W1 [h_i, h_j, d, d0] + b1 = P_i + Q_j + d w_d +
  d0 w_0`` with per-atom projections ``P = h W1a^T + b1``, ``Q = h W1b^T`` (A x H, cheap). Per edge
  this is a weighted sum of four table rows, done by one ``embedding_bag`` kernel: no (E, 2H + 2)
  concatenation, two thirds fewer edge-MLP FLOPs, and no pathological K=2 GEMM.
* The per-edge chain (pre-activation -> SiLU -> Linear -> SiLU -> attention-weighted sum over
  incoming edges, or -> the coordinate weight phi) is one ``torch.autograd.Function`` with a
  hand-written backward: sums over incoming / outgoing edges are ``embedding_bag`` segment sums
  on dst-grouped edges (no temporaries, no atomics), small-N products avoid MKL's slow skinny
  GEMMs, and no (E, H) tensor is materialised twice.
* Products are plain ``F.linear``. Earlier versions called oneDNN's private
  ``mkldnn._linear_pointwise`` for float32: with torch 2.13 it is no faster here (265 against
  275 molecules/s at 4 x 128), and it kept per-shape state that grew a training run's memory
  to 6-7 GB (batches have a different edge count every step). ``fused=False`` selects a plain
  autograd implementation of the same maths (the reference the tests compare against).
* Mixed precision: under ``torch.autocast`` (Lightning's ``precision="bf16-mixed"``) the per-edge
  chains, edge tables and node MLPs run in bfloat16, everything else in float32 (``Graph.compute_dtype``).
* Optional, process-wide: ``tune_cpu_allocator()`` stops glibc from unmapping and re-faulting
  every large freed tensor: ~25% off a training step once the heap has stopped growing; over
  the benchmark's 20 steps 0 to +15%, within run-to-run noise.
* ``compile=True`` runs the plain ops through ``torch.compile`` (inductor cannot lower the fused
  kernels). Optional and not the default: on this CPU it is slower than the fused eager path
  (see the benchmark's ``--compile``) and costs a minute of compilation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from moldiff.geometry import remove_mean
from moldiff.nn.graph import fully_connected_edges, radius_graph
from moldiff.nn.inputs import atom_inputs

__all__ = ["EGNN", "tune_cpu_allocator"]


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, act: str = "none") -> torch.Tensor:
    """``act(x @ w.T + b)`` (act: "none", "swish" = SiLU, "sigmoid"), activations in place. No autograd."""
    y = F.linear(x, w, b)
    if act == "swish":
        return F.silu(y, inplace=True)
    if act == "sigmoid":
        return y.sigmoid_()
    return y


def tune_cpu_allocator() -> bool:
    """Process-wide CPU memory settings for a training or sampling job; call it once, first.

    1. Keep freed memory in the process (glibc malloc) instead of returning it to the OS. By
       default glibc serves every block above a threshold (at most 32 MB) with a fresh ``mmap``
       and unmaps it on free, so every new (E, H) activation (22 MB for 64 QM9 molecules at
       H = 256) is paged in again: ~30k page faults and ~25% of a CPU training step. This sets
       ``M_MMAP_MAX = 0`` (no mmap'd blocks), a 2 GB trim threshold and 64 MB top pad, the
       ``mallopt`` equivalent of the usual jemalloc/tcmalloc advice for PyTorch on CPU.
    2. Bound oneDNN's caches (``DNNL_PRIMITIVE_CACHE_CAPACITY`` and ideep's
       ``LRU_CACHE_CAPACITY``, unless already set). bfloat16 products go through oneDNN, which
       keeps state per input shape, 1024 shapes by default; every batch has a new edge count, so
       a bf16 training run grew by ~1 MB per step (0.46 GB flat with the caps against 1.7 GB and
       rising after 3000 products of varying shape). A new shape misses the cache anyway, so the
       caps cost nothing. They must be set before the first bf16 product of the process.

    Returns False where (1) does not apply (not glibc).
    """
    import ctypes
    import ctypes.util
    import os

    for var in ("DNNL_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(var, "64")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
    return bool(mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) and mallopt(M_TOP_PAD, 64 << 20))


class Graph:
    """Edges (j -> i as ``src`` -> ``dst``) of one forward pass plus the index tensors the fused
    kernels reuse in every layer."""

    def __init__(self, src: torch.Tensor, dst: torch.Tensor, n_atoms: int, compute_dtype: torch.dtype | None = None):
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
        self.bag2 = torch.cat([self.arange, self.arange])
        self.bag2_ptr = torch.tensor([0, E], device=device)
        self.zero_ptr = torch.zeros(1, dtype=torch.long, device=device)

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
        return F.embedding_bag(self.arange, v, self.zero_ptr, mode="sum", per_sample_weights=weight)[0]


class _Edges:
    """Just ``src`` and ``dst``: what the plain (unfused) ops need."""

    def __init__(self, src: torch.Tensor, dst: torch.Tensor):
        self.src, self.dst = src, dst


class _EdgeMLP(torch.autograd.Function):
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
        we = table[2 * A :]  # (2, H)
        dtable = torch.cat(
            [
                graph.sum_into_dst(dg),
                graph.sum_into_src(dg),
                F.embedding_bag(graph.bag2, dg, graph.bag2_ptr, mode="sum", per_sample_weights=torch.cat([d, d0])),
            ]
        )
        dd = dd0 = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dd, dd0 = _linear(dg, we).unbind(1)  # one pass over dg for both edge attributes
        grads = (dtable, dd, dd0, dw2, db2, dwo, dbo)
        return (*(None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.dtypes)), None, None)


def _cast(tensors, dtype):
    return tuple(t if t is None or dtype is None else t.to(dtype) for t in tensors)


def _edge_table(lin: nn.Linear, h: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """[h W1a^T + b1; h W1b^T; w_d; w_0] (2A + 2, H) for the split first layer of an edge MLP,
    in ``dtype`` (mixed precision) or h's."""
    H = h.shape[1]
    w, b = lin.weight, lin.bias
    if dtype is not None:
        h, w, b = h.to(dtype), w.to(dtype), b.to(dtype)
    return torch.cat([torch.addmm(b, h, w[:, :H].t()), h @ w[:, H : 2 * H].t(), w[:, 2 * H :].t()])


def _first_layer(table, d, d0, graph: Graph) -> torch.Tensor:
    """(E, H) pre-activations P_dst + Q_src + d w_d + d0 w_0: one embedding_bag, four rows per edge."""
    one = torch.ones_like(d)
    psw = torch.stack([one, one, d, d0], 1).detach()
    # detached: with a grad-requiring weight embedding_bag takes a much slower path
    return F.embedding_bag(graph.bag4, table.detach(), mode="sum", per_sample_weights=psw)


def _edge_mlp_inference(table, d, d0, w2, b2, graph: Graph) -> torch.Tensor:
    g = _first_layer(table, d, d0, graph)
    return _linear(F.silu(g, inplace=True), w2, b2, "swish")


def _edge_mlp(table, d, d0, w2, b2, wo, bo, graph: Graph, mode: str) -> torch.Tensor:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (table, d, d0, w2, b2, wo, bo)):
        return _EdgeMLP.apply(table, d, d0, w2, b2, wo, bo, graph, mode)
    dtype = d.dtype
    table, d, d0, w2, b2, wo, bo = _cast((table, d, d0, w2, b2, wo, bo), graph.compute_dtype)
    m = _edge_mlp_inference(table, d, d0, w2, b2, graph)
    if mode == "phi":
        out = _linear(m, wo)[:, 0]
    elif mode == "att":
        out = graph.sum_into_dst(m, _linear(m, wo, bo, "sigmoid")[:, 0])
    else:
        out = graph.sum_into_dst(m)
    return out.to(dtype)


class GCL(nn.Module):
    """Invariant message passing layer (EDM's ``GCL``)."""

    def __init__(self, hidden: int, edge_features: int, attention: bool):
        super().__init__()
        self.edge_mlp = nn.Sequential(nn.Linear(2 * hidden + edge_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.att_mlp = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid()) if attention else None

    def messages(self, h, graph, d, d0, fused):
        l1, l2 = self.edge_mlp[0], self.edge_mlp[2]
        att = self.att_mlp[0] if self.att_mlp is not None else None
        if fused:
            wo, bo = (att.weight, att.bias) if att is not None else (None, None)
            return _edge_mlp(_edge_table(l1, h, graph.compute_dtype), d, d0, l2.weight, l2.bias, wo, bo, graph, "att" if att is not None else "sum")
        src, dst = graph.src, graph.dst
        m = self.edge_mlp(torch.cat([h[dst], h[src], d[:, None], d0[:, None]], dim=1))
        if att is not None:
            m = m * self.att_mlp(m)
        return h.new_zeros(h.shape).index_add_(0, dst, m)

    def forward(self, h, graph, d, d0, scale, fused=True):
        agg = self.messages(h, graph, d, d0, fused) * scale
        dtype = getattr(graph, "compute_dtype", None)
        with torch.autocast(h.device.type, dtype=dtype or h.dtype, enabled=dtype is not None):
            update = self.node_mlp(torch.cat([h, agg], dim=1))
        return h + update.to(h.dtype)  # the residual stream stays in h's dtype


class EquivariantUpdate(nn.Module):
    """Coordinate update (EDM's ``EquivariantUpdate``)."""

    def __init__(self, hidden: int, edge_features: int, tanh: bool, coords_range: float):
        super().__init__()
        last = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)
        self.coord_mlp = nn.Sequential(nn.Linear(2 * hidden + edge_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), last)
        self.tanh = tanh
        self.coords_range = coords_range

    def forward(self, h, x, graph, unit, d, d0, scale, fused=True):
        l1, l2, l3 = self.coord_mlp[0], self.coord_mlp[2], self.coord_mlp[4]
        if fused:
            phi = _edge_mlp(_edge_table(l1, h, graph.compute_dtype), d, d0, l2.weight, l2.bias, l3.weight, None, graph, "phi")
        else:
            phi = self.coord_mlp(torch.cat([h[graph.dst], h[graph.src], d[:, None], d0[:, None]], dim=1))[:, 0]
        if self.tanh:
            phi = torch.tanh(phi) * self.coords_range
        agg = x.new_zeros(x.shape).index_add_(0, graph.dst, unit * phi[:, None])
        return x + agg * scale


class EquivariantBlock(nn.Module):
    def __init__(self, hidden, edge_features, attention, tanh, coords_range):
        super().__init__()
        self.gcl = GCL(hidden, edge_features, attention)
        self.update = EquivariantUpdate(hidden, edge_features, tanh, coords_range)

    def forward(self, h, x, graph, d0, scale, norm_constant, fused=True):
        diff = x.index_select(0, graph.dst) - x.index_select(0, graph.src)
        d = diff.square().sum(1)
        unit = diff / (torch.sqrt(d + 1e-8) + norm_constant)[:, None]
        h = self.gcl(h, graph, d, d0, scale, fused)
        x = self.update(h, x, graph, unit, d, d0, scale, fused)
        return h, x


class EGNN(nn.Module):
    """E(3)-equivariant epsilon network for flat batches of molecules.

    ``forward(x, h, t, batch, n_mol, edges=None, context=None) -> (eps_x, eps_h)``: ``x`` (A, 3),
    ``h`` (A, ``in_features``), ``t`` (M,), (M, 1) or a scalar, ``batch`` (A,) molecule index,
    ``n_mol`` M; ``context`` (M, ``context_features``) for a conditional network.
    ``edges`` optionally a precomputed ``(src, dst)`` (e.g. ``fully_connected_edges`` once per
    sampling run); otherwise they are built from ``x`` once per call (``edges="full"``: all pairs
    within a molecule; ``"radius"``: pairs closer than ``cutoff`` in the input positions, at most
    ``max_num_neighbors`` nearest per atom if set). ``eps_x`` has zero mean per molecule.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int = 128,
        layers: int = 4,
        time_conditioning: bool = True,
        edges: str = "full",
        cutoff: float | None = None,
        norm_constant: float = 1.0,
        tanh: bool = True,
        coords_range: float = 15.0,
        attention: bool = True,
        aggregation: str = "sum",
        normalization_factor: float = 1.0,
        max_num_neighbors: int | None = None,
        dtype: torch.dtype | None = None,
        fused: bool = True,
        compile: bool = False,
        out_features: int | None = None,
        context_features: int = 0,
    ):
        super().__init__()
        if edges not in ("full", "radius"):
            raise ValueError(f"edges must be 'full' or 'radius', got {edges!r}")
        if edges == "radius" and cutoff is None:
            raise ValueError("edges='radius' needs a cutoff")
        if aggregation not in ("sum", "mean"):
            raise ValueError(f"aggregation must be 'sum' or 'mean', got {aggregation!r}")
        self.in_features = in_features
        self.hidden = hidden
        self.layers = layers
        self.time_conditioning = time_conditioning
        self.context_features = int(context_features)
        self.edges = edges
        self.cutoff = cutoff
        self.max_num_neighbors = max_num_neighbors
        self.norm_constant = float(norm_constant)
        self.aggregation = aggregation
        self.normalization_factor = float(normalization_factor)
        # torch.compile (inductor) cannot lower the fused kernels: compiling uses the plain ops
        self.fused = fused and not compile
        edge_features = 2  # d_ij and the initial d0_ij
        self.embedding = nn.Linear(in_features + int(time_conditioning) + self.context_features, hidden)
        self.blocks = nn.ModuleList(
            EquivariantBlock(hidden, edge_features, attention, tanh, float(coords_range) / layers) for _ in range(layers)
        )
        # out_features: width of the invariant atom output (eps_h: in_features; an encoder: any)
        self.embedding_out = nn.Linear(hidden, in_features if out_features is None else out_features)
        if dtype is not None:
            self.to(dtype)
        self._compiled_core = torch.compile(self._plain_core, dynamic=True) if compile else None

    def build_edges(self, x: torch.Tensor, batch: torch.Tensor, n_mol: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.edges == "full":
            return fully_connected_edges(batch, n_mol)
        return radius_graph(x, self.cutoff, batch, max_num_neighbors=self.max_num_neighbors)

    def forward(self, x, h, t, batch, n_mol, edges=None, context=None):
        device = x.device.type
        if torch.is_autocast_enabled(device):
            # mixed precision (Lightning's precision="bf16-mixed", or sampling in bf16): only the
            # per-edge MLPs, nearly all the FLOPs, run in the autocast dtype (fused path); the node
            # MLPs, residual stream and coordinates stay in the input dtype
            with torch.autocast(device, enabled=False):
                return self._forward(x, h, t, batch, n_mol, edges, context, torch.get_autocast_dtype(device))
        return self._forward(x, h, t, batch, n_mol, edges, context, None)

    def _forward(self, x, h, t, batch, n_mol, edges, context, compute_dtype):
        batch = batch.long()
        src, dst = self.build_edges(x, batch, n_mol) if edges is None else edges
        graph = Graph(src.long(), dst.long(), x.shape[0], compute_dtype if self.fused else None)
        h = atom_inputs(h, t, batch, n_mol, self.time_conditioning, context, self.context_features)
        if self.aggregation == "sum":
            scale = 1.0 / self.normalization_factor
        else:
            scale = 1.0 / graph.in_degree.clamp(min=1).to(x.dtype)[:, None]
        if self._compiled_core is not None:
            dx, eps_h = self._compiled_core(x, h, graph.src, graph.dst, scale)
        else:
            dx, eps_h = self._core(x, h, graph, scale)
        return remove_mean(dx, batch, n_mol), eps_h

    def _plain_core(self, x, h, src, dst, scale):
        # only tensors cross the compiled boundary (Graph's Python ints would force recompiles)
        return self._core(x, h, _Edges(src, dst), scale)

    def _core(self, x, h, graph, scale):
        """(x_L - x, eps_h) given the edges."""
        x0 = x
        d0 = (x.index_select(0, graph.dst) - x.index_select(0, graph.src)).square().sum(1)
        h = self.embedding(h)
        for block in self.blocks:
            h, x = block(h, x, graph, d0, scale, self.norm_constant, self.fused)
        return x - x0, self.embedding_out(h)
