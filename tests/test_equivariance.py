"""The tests' equivariance assertion (tests/equivariance.py) catches what it must: a dependence on
absolute position, a pseudovector under a reflection, an output that ignores the atom order."""

import pytest
import torch

from equivariance import assert_equivariant, random_orthogonal
from moldiff.geometry import remove_mean

BATCH = torch.tensor([0, 0, 0, 1, 1, 1, 1])
N = 2


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(7, 2, generator=g, dtype=torch.float64)


def _centred(x, h, batch):  # equivariant: each atom's offset from its molecule's centre, and its length
    v = remove_mean(x, batch, N)
    return v, torch.cat([v.norm(dim=1, keepdim=True), h], dim=1)


def test_random_orthogonal():
    for det in (1.0, -1.0):
        q = random_orthogonal(7, det)
        assert torch.allclose(q @ q.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
        assert float(torch.det(q)) == pytest.approx(det, abs=1e-12)
    assert not torch.equal(random_orthogonal(1), random_orthogonal(2))


def test_equivariant_passes_and_broken_symmetries_fail():
    x, h = _inputs()
    err_v, err_f = assert_equivariant(_centred, x, h, BATCH, N, atol=1e-12, permute=True)
    assert err_v < 1e-12 and err_f < 1e-12
    with pytest.raises(AssertionError, match="vector"):  # absolute positions: not translation invariant
        assert_equivariant(lambda x, h, b: (x, h), x, h, BATCH, N, atol=1e-6)
    assert_equivariant(lambda x, h, b: (x, h), x, h, BATCH, N, atol=1e-12, shift=None)

    def pseudovector(x, h, b):  # a cross product turns with rotations but not with reflections
        v, f = _centred(x, h, b)
        return torch.linalg.cross(v, torch.roll(v, 1, dims=0) * (b == torch.roll(b, 1))[:, None]), f

    assert_equivariant(pseudovector, x, h, BATCH, N, atol=1e-12, det=1.0)
    with pytest.raises(AssertionError, match="vector"):
        assert_equivariant(pseudovector, x, h, BATCH, N, atol=1e-6, det=-1.0)
    with pytest.raises(AssertionError, match="invariant"):  # ignores the atom order: wrong once permuted
        assert_equivariant(lambda x, h, b: (_centred(x, h, b)[0], h[:1].expand_as(h)), x, h, BATCH, N, atol=1e-6,
                           permute=True)
