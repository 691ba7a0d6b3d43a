"""GFN2-xTB guidance on the denoised estimate, to lower strain late in sampling.

At time t the network's estimate of the clean molecule is x0_hat = (x_t - sigma_t eps) / alpha_t
with atom types from argmax of h0_hat. tblite gives E_xTB(x0_hat) and its gradient; the chain rule
through x0_hat is taken as 1 / alpha_t (the network's own Jacobian is neglected, as in
training-free guidance methods: it would cost a backward pass through the network and the
denoised estimate is what the guidance should move). The gradient is in Hartree per Angstrom;
the scale s(t) sets its weight, and ``Scale(t_max=...)`` restricts it to low noise, where x0_hat
is a molecule xTB can evaluate.

A molecule xTB cannot evaluate (SCF not converging, atoms on top of each other, an odd electron
count when ``require_closed_shell``) is reported as failed for that step and left unguided.
Runs in a process pool of ``workers`` (tblite is fastest single-threaded on small molecules),
started once and kept until ``close()`` (spawned processes take a second or two to start).
"""

from __future__ import annotations

import numpy as np
import torch

from moldiff.guidance.guided import Energy
from moldiff.metrics.xtb_energy import ANGSTROM_TO_BOHR, xtb_energy_gradient, xtb_pool


def _one(args):
    numbers, positions, closed_shell = args
    try:
        if closed_shell and int(np.sum(numbers)) % 2:
            return None, None, "odd electron count"
        e, g = xtb_energy_gradient(numbers, positions, accuracy=1.0)
        if not np.isfinite(e):  # its gradient would mean nothing, however finite
            return None, None, "non-finite energy"
        return e, g * ANGSTROM_TO_BOHR, None  # Hartree/Bohr -> Hartree/Angstrom
    except ImportError:
        raise
    except Exception as err:  # noqa: BLE001 - a per-molecule outcome
        return None, None, f"{type(err).__name__}"


class XTBEnergy(Energy):
    name = "xtb"

    def __init__(self, sde, layout, workers: int = 1, require_closed_shell: bool = False):
        self.sde, self.layout, self.workers, self.closed = sde, layout, int(workers), bool(require_closed_shell)
        self.last_reasons: list[str | None] = []
        self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __del__(self):
        self.close()

    def gradient(self, state, t, eps=None):
        x, batch, n = state.pos, state.batch, state.n_mol
        clean = self.sde.x0_from_eps(state, eps, t)
        x0 = clean.pos.detach().cpu().double().numpy()
        numbers = self.layout.decode_numbers(clean.atom_type)
        b = batch.cpu().numpy()
        jobs = [(numbers[b == m], x0[b == m], self.closed) for m in range(n)]
        if self.workers > 1:
            if self._pool is None:
                self._pool = xtb_pool(self.workers)
            results = list(self._pool.map(_one, jobs, chunksize=max(1, len(jobs) // (4 * self.workers))))
        else:
            results = [_one(j) for j in jobs]
        gx = np.zeros_like(x0)
        ok = np.ones(n, dtype=bool)
        self.last_reasons = [r[2] for r in results]
        for m, (e, g, reason) in enumerate(results):
            if reason is not None:
                ok[m] = False
                continue
            gx[b == m] = g
        gx = torch.from_numpy(gx).to(x) / self.sde.alpha(t, batch)  # d E(x0_hat) / d x_t = grad E / alpha_t
        return {"pos": gx, "atom_type": torch.zeros_like(state.atom_type)}, torch.from_numpy(ok).to(x.device)
