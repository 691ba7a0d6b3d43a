"""Likelihoods of molecules under a diffusion model: the ELBO in EDM's convention (``elbo.py``),
the exact probability-flow-ODE log-likelihood (``ode_nll.py``) and the terms both share
(``terms.py``: prior, log p(N), dequantisation volume, dimensions)."""
