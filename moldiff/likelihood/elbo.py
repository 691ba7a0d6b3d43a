"""The ELBO of molecules in EDM's convention (Hoogeboom et al. 2022, eq. 8 and appendix):

    -log p(x, h, N) <= -log p(N) + KL(q(z_1 | x, h) || N(0, I)) + sum_{i=1}^{T} L_i + L_0
                        - (N - 1) * 3 * log(x_scale)

* L_i = 1/2 (SNR(s) / SNR(t) - 1) E||eps - eps_hat(z_t, t)||^2, t = i / T, s = (i - 1) / T, over
  the zero-CoM position dimensions and the N * F feature dimensions (``loss/weights.py``);
  all T terms (``timesteps="all"``) or an unbiased estimate from K uniform steps, drawn
  independently for every molecule, so that the spread over molecules includes the estimator's
  (one draw shared by a batch moves every molecule's value together, unseen by that spread).
* L_0 = -log p(x | z_0) - log p(h | z_0): positions Gaussian with variance sigma_0^2 / alpha_0^2,
  atom types and charges as the mass of width-1 bins in unscaled (integer) units
  (``loss/reconstruction.py``). Because the feature likelihood is a probability, not a density,
  the feature scaling needs no volume correction; the positions' scale is 1 in EDM (term 0).
* For continuous data (``layout=None``, the analytic tests) L_0 is the Gaussian density of the
  features too.

Values are nats per molecule, NLL-like (lower is better), one Monte-Carlo draw of eps per term.
"""

from __future__ import annotations

import math

import torch

from moldiff.likelihood.terms import log_p_atoms, prior_kl
from moldiff.loss.objective import noised_error
from moldiff.loss.reconstruction import l0_from_pieces
from moldiff.loss.weights import discrete_vlb_weight
from moldiff.state import MolState


def reconstruction_nll(eps_fn, sde, clean: MolState, layout=None, generator=None):
    """L_0 (M,) at t = 0, constants included."""
    t = torch.zeros(clean.n_mol, dtype=clean.pos.dtype, device=clean.pos.device)
    _, pieces = noised_error(eps_fn, sde, clean, t, generator)
    return l0_from_pieces(sde, clean, t, *pieces, layout)


def elbo(eps_fn, sde, clean: MolState, T: int = 1000, timesteps="all", layout=None, histogram=None, generator=None, progress=None,
         horizon: float = 1.0):
    """Per-molecule terms (M,) of the negative ELBO of the molecules ``clean`` (a state: positions
    and scaled features) and their sum ``nll``; ``timesteps``: "all"
    (every step; T network calls) or an int K (unbiased estimate from K uniform steps per molecule,
    K network calls; then also ``nll_se`` (M,), the estimate's standard error from the spread of the
    K terms, for K >= 2).
    ``horizon``: the T steps cover [0, horizon] and the prior N(0, I) sits there (a bridge-refined model)."""
    sched = sde.schedule
    if float(sched.sigma(torch.tensor(0.0, dtype=torch.float64))) == 0.0:
        raise ValueError("the ELBO's L_0 needs sigma(0) > 0: use a schedule with precision > 0 (polynomial, cosine)")
    batch, n = clean.batch, clean.n_mol
    dtype, device = clean.pos.dtype, clean.pos.device
    if timesteps == "all":
        steps, scale = torch.arange(1, T + 1, device=device)[:, None].expand(T, n), 1.0
    else:
        K = int(timesteps)
        steps, scale = torch.randint(1, T + 1, (K, n), generator=generator, device=device), T / K
    diffusion = torch.zeros(n, dtype=dtype, device=device)
    draws = []
    for row in steps:
        # i * horizon / T in float64 first, as a Python float would be: "all" stays bit-identical
        t = (row.double() * horizon / T).to(dtype)
        err, _ = noised_error(eps_fn, sde, clean, t, generator)
        term = discrete_vlb_weight(sched, t, T, horizon) * err
        diffusion = diffusion + scale * term
        draws.append(term)
        if progress is not None:
            progress(1)
    terms = {
        "prior": prior_kl(sde, clean, horizon),
        "diffusion": diffusion,
        "reconstruction": reconstruction_nll(eps_fn, sde, clean, layout, generator),
    }
    if timesteps != "all" and len(draws) > 1:
        # the K terms are i.i.d. given the molecule: T * their spread / sqrt(K) is the estimate's SE
        terms["nll_se"] = T * torch.stack(draws).std(0) / math.sqrt(len(draws))
    if histogram is not None:
        terms["log_pN"] = log_p_atoms(histogram, batch, n).to(dtype)
    terms["nll"] = terms["prior"] + terms["diffusion"] + terms["reconstruction"] - terms.get("log_pN", 0.0)
    return terms
