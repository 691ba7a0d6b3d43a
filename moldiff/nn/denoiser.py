"""A coordinates-and-features network as a denoiser of molecule states.

The networks (``egnn.py``, ``e3nn_net.py``, ``property.py``) keep their tensor signature
``net(x, h, t, batch, n, **kw) -> (out_x, out_h)``: their inner loops are fused per-edge kernels and
compiled cores that take plain tensors, so the state is unpacked here, at their boundary, once per
call. ``state_denoiser(net)`` is what samplers, losses, guidance, likelihoods and bridges call:
``fn(state, t) -> {"pos": out_x, "atom_type": out_h}``, one prediction per field of the Gaussian
model's ``MolState``.
"""

from __future__ import annotations

from moldiff.state import MolState


def state_denoiser(net):
    """``fn(state, t, **kw) -> {"pos", "atom_type"}`` from a network on (x, h, t, batch, n)."""

    def fn(state: MolState, t, **kw):
        out_x, out_h = net(state.pos, state.atom_type, t, state.batch, state.n_mol, **kw)
        return {"pos": out_x, "atom_type": out_h}

    fn.net = net
    return fn
