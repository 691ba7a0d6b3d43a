"""The tests' one equivariance assertion, in the spirit of e3nn's ``assert_equivariant``.

A function of per-atom positions ``x`` and features ``h`` that returns a per-atom vector (which
must turn with the positions) and a per-atom invariant (which must not change) is run on the
inputs and on a transformed copy: an orthogonal map of the positions (a random rotation, with a
reflection by default, since the molecule models are E(3)-, not just SE(3)-equivariant), a random
translation of each molecule and optionally a random order of the atoms.
"""

from __future__ import annotations

import torch


def random_orthogonal(seed: int, det: float = -1.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A uniformly random 3x3 orthogonal matrix with determinant ``det`` (-1: a rotation combined
    with a reflection)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # without it QR's sign convention skews the draw
    if torch.det(q) * det < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def _check(name, got, want, atol, rtol, relative) -> float:
    got, want = got.detach(), want.detach()
    if relative:  # the norm of the difference against the norm of the output (low-precision runs)
        err = float((got - want).norm() / want.norm())
        ok = err < atol
    else:
        err = float((got - want).abs().max())
        ok = bool(((got - want).abs() <= atol + rtol * want.abs()).all())
    assert ok, f"{name} output not equivariant: error {err:.3g} (atol {atol:.3g}, rtol {rtol:.3g})"
    return err


def assert_equivariant(fn, x, h, batch, n, *, atol, atol_h=None, rtol=0.0, relative=False, seed=0, det=-1.0,
                       q=None, shift=5.0, permute=False, reference=None) -> tuple[float, float]:
    """Assert ``fn(x q^T + s, h, batch) == (v q^T, f)`` where ``(v, f) = fn(x, h, batch)``, and return
    the largest errors ``(vector, invariant)``.

    ``fn(x, h, batch) -> (vector (N, 3), invariant (N, ...))``; ``batch`` gives each atom's molecule,
    ``n`` the molecule count. The map: ``q`` if given, else :func:`random_orthogonal` (``seed``,
    ``det``); ``s``: a normal draw times ``shift`` per molecule (0 or None: no translation, for
    functions of zero-CoM positions); ``permute``: the atoms also go in a random order (molecules
    no longer contiguous). The tolerance is ``atol`` (``atol_h`` for the invariant, default the
    same) plus ``rtol`` times the expected value, elementwise as in ``torch.allclose``; with
    ``relative`` the error is ``|got - want| / |want|`` over the whole tensor. ``reference``: the
    outputs at ``x`` when the caller has them already.
    """
    g = torch.Generator().manual_seed(seed + 1)
    q = random_orthogonal(seed, det, x.dtype) if q is None else q.to(x.dtype)
    moved = x @ q.T
    if shift:
        moved = moved + (torch.randn(n, 3, generator=g, dtype=torch.float64) * shift).to(x.dtype)[batch]
    perm = torch.randperm(len(batch), generator=g) if permute else torch.arange(len(batch))
    v, f = fn(x, h, batch) if reference is None else reference
    v2, f2 = fn(moved[perm], h[perm], batch[perm])
    err_v = _check("vector", v2, (v @ q.T)[perm], atol, rtol, relative)
    err_f = _check("invariant", f2, f[perm], atol if atol_h is None else atol_h, rtol, relative)
    return err_v, err_f
