"""E3NNNet: E(3) equivariance, zero CoM output, batch independence, non-trivial output, gradients."""

import math

import pytest
import torch

from equivariance import assert_equivariant
from moldiff.geometry import max_com
from moldiff.nn.e3nn_net import E3NNNet, _molecule_edges

SIZES = (4, 6, 9)
F = 6
TOL = 1e-5


def _batch(sizes=SIZES, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    batch = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(sizes)])
    x = torch.randn(len(batch), 3, generator=g, dtype=dtype) * 1.5 + 3.0  # off-centre on purpose
    h = torch.randn(len(batch), F, generator=g, dtype=dtype)
    t = torch.rand(len(sizes), generator=g, dtype=dtype)
    return x, h, t, batch, len(sizes)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return E3NNNet(F, hidden_irreps="16x0e + 8x1o + 4x2e", layers=2, lmax=2, dtype=torch.float64).eval()


def _max_err(a, b):
    return float((a - b).detach().abs().max())


def _amax(a):
    return float(a.detach().abs().max())


def test_edges_all_ordered_pairs_non_contiguous():
    batch = torch.tensor([1, 0, 1, 2, 0, 1])
    src, dst = _molecule_edges(torch.zeros(6, 3), batch, 3)
    got = sorted(zip(src.tolist(), dst.tolist()))
    want = sorted((i, j) for i in range(6) for j in range(6) if i != j and batch[i] == batch[j])
    assert got == want
    x = torch.tensor([[0.0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0], [5, 0, 0], [0, 3, 0]])
    src, dst = _molecule_edges(x, batch, 3, cutoff=2.0)
    assert sorted(zip(src.tolist(), dst.tolist())) == [(0, 2), (2, 0)]


def test_shapes_dtype_nonzero_and_zero_com(net):
    x, h, t, batch, m = _batch()
    eps_x, eps_h = net(x, h, t, batch, m)
    assert eps_x.shape == (len(batch), 3) and eps_h.shape == (len(batch), F)
    assert eps_x.dtype == torch.float64 and eps_h.dtype == torch.float64
    assert torch.isfinite(eps_x).all() and torch.isfinite(eps_h).all()
    assert max_com(eps_x.detach(), batch, m) < 1e-6
    assert _amax(eps_x) > 1e-4, "1o output is identically zero"
    assert _amax(eps_h) > 1e-4


@pytest.mark.parametrize("det", [1.0, -1.0])
def test_rotation_reflection_translation(net, det):
    x, h, t, batch, m = _batch(seed=1)
    assert_equivariant(lambda xi, hi, bi: net(xi, hi, t, bi, m), x, h, batch, m, atol=TOL, seed=2 if det > 0 else 3, det=det)


def test_reflection_flips_sign_of_inversion(net):
    # a pure inversion x -> -x: a 1o vector output flips sign, scalars are unchanged
    x, h, t, batch, m = _batch(seed=4)
    inversion = -torch.eye(3, dtype=torch.float64)
    assert_equivariant(lambda xi, hi, bi: net(xi, hi, t, bi, m), x, h, batch, m, atol=TOL, q=inversion, shift=None)


def test_permutation_equivariance(net):
    x, h, t, batch, m = _batch(seed=5)
    perm = torch.randperm(len(batch), generator=torch.Generator().manual_seed(6))
    eps_x, eps_h = net(x, h, t, batch, m)
    ex2, eh2 = net(x[perm], h[perm], t, batch[perm], m)  # atoms of a molecule no longer contiguous
    assert _max_err(ex2, eps_x[perm]) < TOL
    assert _max_err(eh2, eps_h[perm]) < TOL


def test_molecules_are_independent(net):
    x, h, t, batch, m = _batch(seed=7)
    eps_x, eps_h = net(x, h, t, batch, m)
    for i in range(m):
        sel = batch == i
        ex1, eh1 = net(x[sel], h[sel], t[i : i + 1], torch.zeros(int(sel.sum()), dtype=torch.long), 1)
        assert _max_err(ex1, eps_x[sel]) < TOL
        assert _max_err(eh1, eps_h[sel]) < TOL
    # changing one molecule leaves the others untouched
    x2 = x.clone()
    x2[batch == 0] += torch.randn(int((batch == 0).sum()), 3, dtype=torch.float64)
    ex2, eh2 = net(x2, h, t, batch, m)
    keep = batch != 0
    assert _max_err(ex2[keep], eps_x[keep]) < TOL and _max_err(eh2[keep], eps_h[keep]) < TOL
    assert _max_err(ex2[~keep], eps_x[~keep]) > 1e-6


def test_time_conditioning(net):
    x, h, t, batch, m = _batch(seed=8)
    a = net(x, h, 0.3, batch, m)
    b = net(x, h, torch.full((m,), 0.3, dtype=torch.float64), batch, m)
    c = net(x, h, 0.9, batch, m)
    assert _max_err(a[0], b[0]) < 1e-12 and _max_err(a[1], b[1]) < 1e-12
    assert _max_err(a[1], c[1]) > 1e-6


def test_cutoff_variant_equivariant():
    torch.manual_seed(1)
    net = E3NNNet(F, hidden_irreps="8x0e + 4x1o + 4x1e + 2x2e", layers=2, lmax=3, cutoff=3.5,
                  time_conditioning=False).double()
    x, h, t, batch, m = _batch(seed=9)
    eps_x, eps_h = net(x, h, t, batch, m)
    assert _amax(eps_x) > 1e-6 and max_com(eps_x.detach(), batch, m) < 1e-6
    assert_equivariant(lambda xi, hi, bi: net(xi, hi, t, bi, m), x, h, batch, m, atol=TOL, seed=10, reference=(eps_x, eps_h))


def test_float32_and_gradient_step():
    torch.manual_seed(2)
    net = E3NNNet(F, hidden_irreps="16x0e + 8x1o + 4x2e", layers=2)
    x, h, t, batch, m = _batch(seed=11, dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    target_x = torch.randn_like(x)
    eps_x, eps_h = net(x, h, t, batch, m)
    assert eps_x.dtype == torch.float32
    loss = (eps_x - target_x).pow(2).mean() + eps_h.pow(2).mean()
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    opt.step()
    eps_x2, eps_h2 = net(x, h, t, batch, m)
    loss2 = (eps_x2 - target_x).pow(2).mean() + eps_h2.pow(2).mean()
    assert math.isfinite(loss2.item()) and loss2.item() != loss.item()


def test_precomputed_edges_same_result_and_equivariant(net):
    # the EGNN's interface: a sampler builds the edges once and passes them to every call
    x, h, t, batch, m = _batch(seed=12)
    edges = net.build_edges(x, batch, m)
    eps_x, eps_h = net(x, h, t, batch, m)
    ex, eh = net(x, h, t, batch, m, edges=edges)
    assert torch.equal(ex, eps_x) and torch.equal(eh, eps_h)
    # int32 edges work too; and the fully connected graph stays valid for moved positions
    ex, eh = net(x, h, t, batch, m, edges=tuple(e.int() for e in edges))
    assert torch.equal(ex, eps_x) and torch.equal(eh, eps_h)
    assert_equivariant(lambda xi, hi, bi: net(xi, hi, t, bi, m, edges=edges), x, h, batch, m, atol=TOL, seed=13,
                       reference=(eps_x, eps_h))
    # a graph with fewer edges changes the output: the argument is used, not rebuilt
    keep = edges[0] != 0
    ex3, _ = net(x, h, t, batch, m, edges=(edges[0][keep], edges[1][keep]))
    assert _max_err(ex3, eps_x) > 1e-6


def test_precomputed_edges_with_cutoff():
    torch.manual_seed(3)
    net = E3NNNet(F, hidden_irreps="8x0e + 4x1o", layers=1, lmax=2, cutoff=3.5, dtype=torch.float64)
    x, h, t, batch, m = _batch(seed=14)
    edges = net.build_edges(x, batch, m)
    assert len(edges[0]) < len(_molecule_edges(x, batch, m)[0])  # the cutoff removes some pairs
    eps_x, eps_h = net(x, h, t, batch, m)
    ex, eh = net(x, h, t, batch, m, edges=edges)
    assert torch.equal(ex, eps_x) and torch.equal(eh, eps_h)
    # a rotation only: the cutoff graph is the same graph after it
    assert_equivariant(lambda xi, hi, bi: net(xi, hi, t, bi, m, edges=edges), x, h, batch, m, atol=TOL, seed=15, det=1.0,
                       shift=None, reference=(eps_x, eps_h))
