"""Energy guidance through the epsilon/score interface: an energy E(z_t, t) per molecule shifts
the score by -s(t) grad E, i.e. eps <- eps + sigma_t s(t) grad E (``guided.py``). Energies:
learned property energies ||g(z_t, t) - c||^2 (``property_energy.py``) and GFN2-xTB on the
denoised estimate (``xtb_energy.py``). Samplers are not touched: they get a new eps function."""
