"""Samplers. Each steps a ``MolState`` with any denoiser ``eps_fn(state, t) -> {field: eps}`` (a
network, an analytic score, or a guided one) and a ``VPSDE``; none knows which it was given.

* ``ancestral.py``: DDPM ancestral sampling.
* ``reverse_sde.py``: reverse-SDE Euler-Maruyama and predictor-corrector (Langevin corrector).
* ``ode.py``: probability-flow ODE with Heun, DPM-Solver-2 or an adaptive torchdiffeq solver.
* ``karras.py``: Karras et al.'s stochastic sampler.
``samplers.py`` names them (``SAMPLERS``) and drives them (``sample``); ``base.py`` has what they share.
"""

from moldiff.sampling.base import sizes_to_batch
from moldiff.sampling.samplers import SAMPLERS, sample

__all__ = ["SAMPLERS", "sample", "sizes_to_batch"]
