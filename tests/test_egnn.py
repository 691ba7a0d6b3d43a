"""EGNN (moldiff.nn.egnn, egnn_kernels) and edge builders (moldiff.nn.graph): symmetries, batching, graphs."""

import copy

import pytest
import torch
from equivariance import assert_equivariant

from moldiff.nn import egnn_kernels
from moldiff.nn.egnn import EGNN
from moldiff.nn.egnn_kernels import EdgeMLP, Graph
from moldiff.nn.graph import fully_connected_edges, radius_graph

F64 = torch.float64
SIZES = (3, 7, 12)


def make_batch(sizes=SIZES, seed=0, dtype=F64, features=6):
    g = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x = torch.randn(len(batch), 3, generator=g, dtype=dtype) * 1.5
    h = torch.randn(len(batch), features, generator=g, dtype=dtype)
    t = torch.rand(len(sizes), generator=g, dtype=dtype)
    return x, h, t, batch, len(sizes)


def make_model(seed=0, dtype=F64, **kw):
    torch.manual_seed(seed)
    kw = {"hidden": 16, "layers": 3, "normalization_factor": 3.0, **kw}
    model = EGNN(6, dtype=dtype, **kw)
    for block in model.blocks:  # EDM's init (gain 0.001) makes coordinate updates tiny: enlarge them
        block.update.coord_mlp[4].weight.data.normal_(0, 0.5)
    return model


def brute_radius(x, r, batch, k=None, loop=False):
    d2 = (x[:, None] - x[None]).square().sum(-1)
    adj = (d2 < r * r) & (batch[:, None] == batch[None])
    if not loop:
        adj.fill_diagonal_(False)
    dst, src = adj.nonzero(as_tuple=True)
    if k is not None:
        keep = []
        for i in range(len(x)):
            e = (dst == i).nonzero().flatten().tolist()
            keep += sorted(e, key=lambda q: (d2[i, src[q]].item(), src[q].item()))[:k]
        keep = torch.tensor(sorted(keep), dtype=torch.long)
        src, dst = src[keep], dst[keep]
    o = torch.argsort(dst * len(x) + src)
    return src[o], dst[o]


def edge_set(src, dst):
    return sorted(zip(src.tolist(), dst.tolist()))


# --- graphs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shuffle", [False, True])
def test_fully_connected_edges(shuffle):
    sizes = torch.tensor([1, 3, 7, 12, 2, 29])
    batch = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    if shuffle:
        batch = batch[torch.randperm(len(batch), generator=torch.Generator().manual_seed(1))]
    src, dst = fully_connected_edges(batch, len(sizes))
    assert len(src) == int((sizes * (sizes - 1)).sum())
    x = torch.zeros(len(batch), 3, dtype=F64)
    assert edge_set(src, dst) == edge_set(*brute_radius(x, 1.0, batch))
    if not shuffle:  # dst-major, src-minor order
        assert torch.equal(torch.argsort(dst * len(batch) + src), torch.arange(len(src)))
    s2, d2 = fully_connected_edges(batch, len(sizes), loop=True)
    assert len(s2) == int((sizes * sizes).sum())
    # a trailing molecule index with no atoms changes nothing
    s3, d3 = fully_connected_edges(batch, len(sizes) + 2)
    assert torch.equal(s3, src) and torch.equal(d3, dst)


def test_radius_graph_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    for trial in range(12):
        sizes = torch.randint(1, 40, (5,), generator=g)
        batch = torch.repeat_interleave(torch.arange(5), sizes)
        if trial % 2:
            batch = batch[torch.randperm(len(batch), generator=g)]
        x = torch.randn(len(batch), 3, generator=g, dtype=F64) * 3
        for r in (0.7, 2.5, 100.0):
            for k in (None, 1, 5):
                for loop in (False, True):
                    got = radius_graph(x, r, batch, max_num_neighbors=k, loop=loop, chunk_size=97 if trial < 6 else 1 << 20)
                    want = brute_radius(x, r, batch, k, loop)
                    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (trial, r, k, loop)


def test_radius_graph_edge_cases():
    # widely spread atoms (cell count capped), float32, single molecule without batch, empty input
    x = torch.tensor([[0.0, 0.0, 0.0], [0.05, 0.0, 0.0], [1e6, 0.0, 0.0], [1e6, 0.05, 0.0]])
    src, dst = radius_graph(x, 0.1)
    assert edge_set(src, dst) == [(0, 1), (1, 0), (2, 3), (3, 2)]
    assert radius_graph(x, 0.0)[0].numel() == 0
    assert radius_graph(torch.zeros(0, 3), 1.0)[0].numel() == 0
    # identical positions: all pairs within a molecule
    batch = torch.tensor([0, 0, 0, 1, 1])
    src, dst = radius_graph(torch.zeros(5, 3), 0.5, batch)
    assert len(src) == 3 * 2 + 2 * 1


# --- EGNN symmetries ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"fused": False},
        {"attention": False, "aggregation": "mean"},
        {"edges": "radius", "cutoff": 3.0},
        {"tanh": False, "time_conditioning": False},
    ],
)
def test_e3_equivariance_permutation_and_zero_mean(kw):
    model = make_model(**kw)
    x, h, t, batch, n = make_batch()
    eps_x, eps_h = model(x, h, t, batch, n)
    assert eps_x.abs().max() > 1e-3  # the test is not vacuous

    # a rotation combined with a reflection, a translation of each molecule, atoms reordered
    assert_equivariant(lambda xi, hi, bi: model(xi, hi, t, bi, n), x, h, batch, n, atol=1e-9, seed=3, permute=True,
                       reference=(eps_x, eps_h))

    mean = torch.zeros(n, 3, dtype=F64).index_add_(0, batch, eps_x) / torch.bincount(batch)[:, None]
    assert mean.abs().max() < 1e-6


def test_batching_invariance():
    model = make_model()
    x, h, t, batch, n = make_batch(sizes=(3, 7, 12, 1, 5))
    eps_x, eps_h = model(x, h, t, batch, n)
    start = 0
    for m, size in enumerate((3, 7, 12, 1, 5)):
        sl = slice(start, start + size)
        ex, eh = model(x[sl], h[sl], t[m : m + 1], torch.zeros(size, dtype=torch.long), 1)
        assert (ex - eps_x[sl]).abs().max() < 1e-10 and (eh - eps_h[sl]).abs().max() < 1e-10
        start += size


def test_radius_equals_full_for_large_cutoff():
    x, h, t, batch, n = make_batch()
    full = make_model()
    radius = make_model(edges="radius", cutoff=1e3)
    radius.load_state_dict(full.state_dict())
    for a, b in zip(full(x, h, t, batch, n), radius(x, h, t, batch, n)):
        assert (a - b).abs().max() < 1e-12


def test_time_and_edges_arguments():
    model = make_model()
    x, h, t, batch, n = make_batch()
    a = model(x, h, torch.tensor(0.3, dtype=F64), batch, n)
    b = model(x, h, torch.full((n,), 0.3, dtype=F64), batch, n)
    c = model(x, h, 0.3, batch, n, edges=fully_connected_edges(batch, n))
    for u, v, w in zip(a, b, c):
        assert torch.equal(u, v) and torch.equal(u, w)
    with pytest.raises(ValueError):
        model(x, h, torch.zeros(n + 1, dtype=F64), batch, n)


# --- fused kernels against the plain autograd implementation ------------------------------------
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-10), (torch.float32, 2e-4)])
@pytest.mark.parametrize("kw", [{}, {"attention": False, "aggregation": "mean"}])
def test_fused_matches_reference_values_and_gradients(dtype, tol, kw):
    fused = make_model(dtype=dtype, **kw)
    ref = copy.deepcopy(fused)
    ref.fused = False
    x, h, t, batch, n = make_batch(dtype=dtype)
    g = torch.Generator().manual_seed(7)
    wx, wh = torch.randn(x.shape, generator=g, dtype=dtype), torch.randn(h.shape, generator=g, dtype=dtype)
    grads = []
    for model in (fused, ref):
        xi = x.clone().requires_grad_(True)
        ex, eh = model(xi, h, t, batch, n)
        ((ex * wx).sum() + (eh * wh).sum()).backward()
        grads.append((ex.detach(), eh.detach(), xi.grad, [p.grad for p in model.parameters()]))
        with torch.no_grad():  # the inference path (fused activations) agrees too
            ex0, eh0 = model(x, h, t, batch, n)
        assert (ex0 - ex).abs().max() < tol and (eh0 - eh).abs().max() < tol
    (a_x, a_h, a_gx, a_gp), (b_x, b_h, b_gx, b_gp) = grads
    assert (a_x - b_x).abs().max() < tol and (a_h - b_h).abs().max() < tol
    assert (a_gx - b_gx).abs().max() < tol * max(1.0, b_gx.abs().max().item())
    for ga, gb in zip(a_gp, b_gp):
        assert (ga - gb).abs().max() <= tol * max(1.0, gb.abs().max().item())


@pytest.mark.parametrize("mode", ["att", "sum", "phi"])
def test_edge_mlp_gradcheck(mode):
    g = torch.Generator().manual_seed(0)
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    src, dst = fully_connected_edges(batch, 3)
    A, E, H = len(batch), len(src), 5
    graph = Graph(src, dst, A)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=F64, requires_grad=True)

    args = (r(2 * A + 2, H), r(E), r(E), r(H, H), r(H), r(1, H), r(1) if mode == "att" else None)
    assert torch.autograd.gradcheck(lambda *a: EdgeMLP.apply(*a, graph, mode), args)


def test_unsorted_edges_and_single_atoms():
    model = make_model()
    x, h, t, batch, n = make_batch(sizes=(1, 5, 9, 1))
    src, dst = fully_connected_edges(batch, n)
    perm = torch.randperm(len(src), generator=torch.Generator().manual_seed(2))
    outs = []
    for edges in (None, (src[perm], dst[perm])):
        xi = x.clone().requires_grad_(True)
        ex, eh = model(xi, h, t, batch, n, edges=edges)
        (ex.square().sum() + eh.sum()).backward()
        outs.append((ex.detach(), eh.detach(), xi.grad))
    for a, b in zip(*outs):
        assert (a - b).abs().max() < 1e-10
    assert outs[0][0][0].abs().max() == 0 and outs[0][0][-1].abs().max() == 0  # lone atoms: eps_x = 0
    # a batch of lone atoms has no edges at all
    ex, eh = model(x[:1], h[:1], t[:1], batch[:1] * 0, 1)
    assert ex.abs().max() == 0 and torch.isfinite(eh).all()


# --- mixed precision --------------------------------------------------------------------------
def _outputs_and_grads(model, x, h, t, batch, n, run):
    g = torch.Generator().manual_seed(7)
    wx, wh = torch.randn(x.shape, generator=g), torch.randn(h.shape, generator=g)
    model.zero_grad()
    xi = x.clone().requires_grad_(True)
    ex, eh = run(model, xi)
    ((ex * wx).sum() + (eh * wh).sum()).backward()
    return ex.detach(), eh.detach(), xi.grad, [p.grad for p in model.parameters()]


def test_mixed_precision_casts_in_and_out_exactly():
    """The casting plumbing alone, with float64 as the 'low' dtype of a float32 model: the per-edge
    MLPs then run more precisely, so values and every gradient must agree with plain float32 to
    float32 rounding, and come back as float32."""
    model = make_model(dtype=torch.float32)
    x, h, t, batch, n = make_batch(dtype=torch.float32)
    plain = _outputs_and_grads(model, x, h, t, batch, n, lambda m, xi: m(xi, h, t, batch, n))
    mixed = _outputs_and_grads(model, x, h, t, batch, n, lambda m, xi: m._forward(xi, h, t, batch, n, None, None, torch.float64))
    for a, b in zip(plain[:3], mixed[:3]):
        assert b.dtype == torch.float32 and (a - b).abs().max() < 1e-4 * max(1.0, a.abs().max().item())
    for a, b in zip(plain[3], mixed[3]):
        assert b.dtype == torch.float32 and (a - b).abs().max() < 1e-4 * max(1.0, a.abs().max().item())


def test_bf16_autocast_is_close_to_float32_and_equivariant():
    model = make_model(dtype=torch.float32, hidden=32)
    x, h, t, batch, n = make_batch(dtype=torch.float32)

    def bf16(m, xi, h=h):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m(xi, h, t, batch, n)

    ref = _outputs_and_grads(model, x, h, t, batch, n, lambda m, xi: m(xi, h, t, batch, n))
    low = _outputs_and_grads(model, x, h, t, batch, n, bf16)
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert low[0].dtype == low[1].dtype == torch.float32
    assert rel(low[0], ref[0]) < 5e-2 and rel(low[1], ref[1]) < 5e-2  # bf16 keeps 8 bits of mantissa; 3 layers of a deliberately strong net
    assert all(p.dtype == torch.float32 for p in low[3])
    flat = lambda grads: torch.cat([g.flatten() for g in grads])  # noqa: E731
    assert rel(flat(low[3]), flat(ref[3])) < 0.05  # a few % per tensor on this untrained net
    with torch.no_grad():  # the inference path agrees with the autograd path
        ex0, eh0 = bf16(model, x)
    assert rel(ex0, low[0]) < 5e-2 and rel(eh0, low[1]) < 5e-2
    with torch.no_grad():
        assert_equivariant(lambda xi, hi, bi: bf16(model, xi), x, h, batch, n, atol=5e-2, relative=True, seed=3,
                           reference=(ex0, eh0))


@pytest.mark.skipif(not egnn_kernels.ONEDNN, reason="this torch build has no usable oneDNN linear")
def test_onednn_inference_agrees_with_plain_linear(monkeypatch):
    """Sampling's products go through oneDNN (fused activations); they agree with F.linear's."""
    model = make_model(dtype=torch.float32)
    x, h, t, batch, n = make_batch(dtype=torch.float32)
    with torch.no_grad():
        fast = model(x, h, t, batch, n)
        monkeypatch.setattr(egnn_kernels, "ONEDNN", False)
        plain = model(x, h, t, batch, n)
    for a, b in zip(fast, plain):
        assert (a - b).abs().max() < 1e-5 * max(1.0, b.abs().max().item())
