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

Execution: edges are sparse ``(src, dst)`` lists (``moldiff.nn.graph``), built once per forward
and shared by all layers, or passed in by a sampler (``edges=``).

Radius graph (``edges="radius"``; config ``model.edges=radius model.cutoff=<r>``): only pairs with
|x_i - x_j| < r, where x is the network's input, the noised z_t = alpha_t x_0 + sigma_t eps. Positions
are not rescaled (as in EDM; only features are), so r is in angstrom for a clean molecule; at noise
level t a distance D of the molecule sits near alpha_t D, and near t = 1 every atom is within a few
angstrom of every other, so the graph is nearly full there whatever r is (docs/performance.md, "GEOM
scale", has the shares). The graph is built once per forward from the input positions and shared by
all layers, like d0: pairwise distances are E(3)-invariant, so the edge set is too and the network
stays exactly equivariant. Rebuilding it per layer from the updated coordinates would also be
equivariant, but costs a graph and the kernels' index tensors per layer and makes the graph depend on
the network's own intermediate output. The cutoff is hard (no smooth envelope): the output jumps where
a distance crosses r. A sampler must not pass a radius graph built once for a whole run (``edges=``):
positions move. The per-edge MLPs run through
the fused kernels of ``moldiff.nn.egnn_kernels`` (split first layer, hand-written backward; that
module says how and why, ``docs/performance.md`` has the figures). ``fused=False`` evaluates the
modules above with plain autograd ops, the reference the tests compare against. Under
``torch.autocast`` (Lightning's ``precision="bf16-mixed"``) the per-edge chains, edge tables and
node MLPs run in the autocast dtype, everything else in float32 (``Graph.compute_dtype``).
``compile=True`` runs the plain ops through ``torch.compile`` (inductor cannot lower the fused
kernels); optional and not the default: on CPU it is slower than the fused eager path and costs
a minute of compilation.
"""

from __future__ import annotations

import torch
from torch import nn

from moldiff.geometry import remove_mean
from moldiff.nn.egnn_kernels import Graph, PlainGraph, edge_mlp, edge_table
from moldiff.nn.graph import fully_connected_edges, radius_graph
from moldiff.nn.inputs import atom_inputs

__all__ = ["EGNN"]


def _plain_edge_inputs(h, graph, d, d0):
    """[h_i, h_j, d_ij, d0_ij (, one-hot edge class)] per edge: the unfused reference's edge input."""
    cols = [h[graph.dst], h[graph.src], d[:, None], d0[:, None]]
    if getattr(graph, "edge_class", None) is not None:
        cols.append(torch.nn.functional.one_hot(graph.edge_class.long(), graph.n_classes).to(h.dtype))
    return torch.cat(cols, dim=1)


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
            return edge_mlp(edge_table(l1, h, graph.compute_dtype), d, d0, l2.weight, l2.bias, wo, bo, graph, "att" if att is not None else "sum")
        m = self.edge_mlp(_plain_edge_inputs(h, graph, d, d0))
        if att is not None:
            m = m * self.att_mlp(m)
        return h.new_zeros(h.shape).index_add_(0, graph.dst, m)

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
            phi = edge_mlp(edge_table(l1, h, graph.compute_dtype), d, d0, l2.weight, l2.bias, l3.weight, None, graph, "phi")
        else:
            phi = self.coord_mlp(_plain_edge_inputs(h, graph, d, d0))[:, 0]
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
    within a molecule; ``"radius"``: pairs closer than ``cutoff`` angstrom in the input positions, at
    most ``max_num_neighbors`` nearest per atom if set). ``eps_x`` has zero mean per molecule.
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
        edge_classes: int = 0,
    ):
        super().__init__()
        if edges not in ("full", "radius"):
            raise ValueError(f"edges must be 'full' or 'radius', got {edges!r}")
        if edges == "radius" and (cutoff is None or not float(cutoff) > 0):
            raise ValueError(f"edges='radius' needs a cutoff > 0 (angstrom), got {cutoff!r}")
        if edges == "full" and cutoff is not None:  # else a forgotten edges=radius would train on the full graph unnoticed
            raise ValueError(f"cutoff={cutoff!r} is only used with edges='radius'; set edges='radius' or cutoff=None")
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
        # d_ij, the initial d0_ij and, for a bond model, the one-hot class of each edge's noisy bond
        self.edge_classes = int(edge_classes)
        if self.edge_classes and compile:
            raise ValueError("edge_classes needs the eager path (compile=False)")
        edge_features = 2 + self.edge_classes
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
        """``(src, dst)`` of this network's graph on positions ``x``, to pass as ``forward(..., edges=)``."""
        if self.edges == "full":
            return fully_connected_edges(batch, n_mol)
        return radius_graph(x, self.cutoff, batch, max_num_neighbors=self.max_num_neighbors)

    def forward(self, x, h, t, batch, n_mol, edges=None, context=None, edge_class=None, center=True):
        """``edge_class`` (E,): each edge's class (a bond model's noisy bond order), aligned with
        ``edges``, which must then be given; only for a network built with ``edge_classes``.
        ``center=False``: the displacement as computed, not made zero-mean per molecule (a molecule
        held in a fragment's frame)."""
        if (edge_class is None) != (self.edge_classes == 0) or (edge_class is not None and edges is None):
            raise ValueError(f"this network takes {'edge classes with explicit edges' if self.edge_classes else 'no edge classes'}")
        device = x.device.type
        if torch.is_autocast_enabled(device):
            # mixed precision (Lightning's precision="bf16-mixed", or sampling in bf16): only the
            # per-edge MLPs, nearly all the FLOPs, run in the autocast dtype (fused path); the node
            # MLPs, residual stream and coordinates stay in the input dtype
            with torch.autocast(device, enabled=False):
                return self._forward(x, h, t, batch, n_mol, edges, context, torch.get_autocast_dtype(device), edge_class, center)
        return self._forward(x, h, t, batch, n_mol, edges, context, None, edge_class, center)

    def _forward(self, x, h, t, batch, n_mol, edges, context, compute_dtype, edge_class=None, center=True):
        batch = batch.long()
        src, dst = self.build_edges(x, batch, n_mol) if edges is None else edges
        graph = Graph(src.long(), dst.long(), x.shape[0], compute_dtype if self.fused else None, edge_class, self.edge_classes)
        h = atom_inputs(h, t, batch, n_mol, self.time_conditioning, context, self.context_features)
        if self.aggregation == "sum":
            scale = 1.0 / self.normalization_factor
        else:
            scale = 1.0 / graph.in_degree.clamp(min=1).to(x.dtype)[:, None]
        if self._compiled_core is not None:
            dx, eps_h = self._compiled_core(x, h, graph.src, graph.dst, scale)
        else:
            dx, eps_h = self._core(x, h, graph, scale)
        return (remove_mean(dx, batch, n_mol) if center else dx), eps_h

    def _plain_core(self, x, h, src, dst, scale):
        # only tensors cross the compiled boundary (Graph's Python ints would force recompiles)
        return self._core(x, h, PlainGraph(src, dst), scale)

    def _core(self, x, h, graph, scale):
        """(x_L - x, eps_h) given the edges."""
        x0 = x
        d0 = (x.index_select(0, graph.dst) - x.index_select(0, graph.src)).square().sum(1)
        h = self.embedding(h)
        for block in self.blocks:
            h, x = block(h, x, graph, d0, scale, self.norm_constant, self.fused)
        return x - x0, self.embedding_out(h)
