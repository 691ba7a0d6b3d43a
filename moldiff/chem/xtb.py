"""GFN2-xTB on one molecule through ``tblite``: single points and the one BFGS relaxation, used by
the conformer build's polish and by the strain metric and xTB guidance (``pip install tblite ase``).

Units: positions go in and come out in Å; energies are in Hartree and gradients in Hartree/Bohr.
tblite works in Bohr and ASE's optimisers in eV and eV/Å, so every call converts at this boundary.

Speed: tblite runs OpenMP-parallel; for QM9-sized molecules ``OMP_NUM_THREADS=1`` was about 2x
faster than two threads, and far faster on a busy machine, so parallelise over molecules
(processes started with :func:`single_thread_worker`) rather than threads.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np

INSTALL = "`pip install tblite ase` (or `pip install moldiff[extra]`)"


def require_tblite():
    """tblite's ``Calculator`` class; an ImportError with the fix when tblite or ASE is missing."""
    try:
        import ase  # noqa: F401 - the unit conversions and the optimiser
        from tblite.interface import Calculator
    except ImportError as err:  # optional dependency: fail with the fix, not a bare ModuleNotFoundError
        raise ImportError(f"GFN2-xTB needs tblite and ase: {INSTALL}") from err
    return Calculator


def single_thread_worker() -> None:
    """Pool initializer: one OpenMP thread per worker process, set before tblite's runtime starts."""
    os.environ["OMP_NUM_THREADS"] = "1"


def default_uhf(numbers: np.ndarray, charge: int) -> int:
    """Unpaired electrons: 0 for an even electron count, 1 (a doublet) for an odd one."""
    return int(np.sum(numbers) - charge) % 2


def _prepare(numbers, positions, charge: int, uhf: int | None):
    numbers = np.asarray(numbers, dtype=np.int32).reshape(-1)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if len(numbers) != len(positions):
        raise ValueError(f"{len(numbers)} atomic numbers but {len(positions)} positions")
    if not np.isfinite(positions).all():
        raise ValueError("non-finite coordinates")
    uhf = default_uhf(numbers, charge) if uhf is None else int(uhf)
    # tblite silently smears an impossible spin state over fractional occupations; refuse it instead.
    if uhf < 0 or (int(numbers.sum() - charge) - uhf) % 2:
        raise ValueError(f"uhf={uhf} is incompatible with {int(numbers.sum() - charge)} electrons")
    return numbers, positions, uhf


class XTB:
    """One tblite calculator per molecule, reused across geometries so the SCF restarts from the
    last density."""

    def __init__(self, numbers, positions, charge: int = 0, uhf: int | None = None, accuracy: float = 1.0):
        calculator_cls = require_tblite()
        from ase import units

        self.angstrom_to_bohr = 1.0 / units.Bohr  # ase.units.Bohr is one Bohr in Å
        numbers, positions, uhf = _prepare(numbers, positions, charge, uhf)
        self.calc = calculator_cls("GFN2-xTB", numbers, positions * self.angstrom_to_bohr, charge=charge, uhf=uhf)
        self.calc.set("verbosity", 0)  # tblite prints an SCF table per call otherwise
        self.calc.set("accuracy", accuracy)
        self.res = None

    def __call__(self, positions_angstrom: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy (Hartree) and gradient (Hartree/Bohr) at positions in Å."""
        pos = np.asarray(positions_angstrom, dtype=np.float64).reshape(-1, 3)
        if not np.isfinite(pos).all():
            raise ValueError("non-finite coordinates")
        self.calc.update(positions=pos * self.angstrom_to_bohr)
        self.res = self.calc.singlepoint(self.res)
        energy = float(self.res.get("energy"))
        gradient = np.array(self.res.get("gradient"), dtype=np.float64)
        if not (math.isfinite(energy) and np.isfinite(gradient).all()):
            raise FloatingPointError("xTB returned a non-finite energy or gradient")
        return energy, gradient


def xtb_energy_gradient(numbers, positions_angstrom, charge: int = 0, uhf: int | None = None, accuracy: float = 1.0):
    """GFN2-xTB single point.

    Args:
        numbers: (N,) atomic numbers.
        positions_angstrom: (N, 3) coordinates in Å.
        charge: total charge (e).
        uhf: number of unpaired electrons; default ``(sum(numbers) - charge) % 2``.
        accuracy: tblite's SCF accuracy factor (smaller is tighter; 1.0 is tblite's default).

    Returns:
        ``(energy, gradient)``: energy in Hartree, gradient dE/dx in Hartree/Bohr with shape (N, 3).

    Raises:
        ImportError without tblite; ValueError for bad input; tblite's RuntimeError when xTB fails
        (e.g. atoms too close, SCF not converged).
    """
    return XTB(numbers, positions_angstrom, charge, uhf, accuracy)(positions_angstrom)


class Relaxation(NamedTuple):
    positions: np.ndarray  # (N, 3) Å
    energy_before: float  # Hartree
    energy_after: float  # Hartree
    converged: bool  # reached fmax within the step limit


def relax(numbers, positions, steps: int = 50, fmax: float = 0.05, charge: int = 0, uhf: int | None = None) -> Relaxation:
    """GFN2-xTB relaxation with ASE's BFGS, at most ``steps`` steps or until the largest force is
    below ``fmax`` (eV/Å, ASE's convention); ``charge`` and ``uhf`` as in :func:`xtb_energy_gradient`."""
    from ase import Atoms, units
    from ase.calculators.calculator import Calculator, all_changes
    from ase.optimize import BFGS

    xtb = XTB(numbers, positions, charge, uhf)

    class _ASEWrapper(Calculator):
        # ASE optimisers want eV and eV/Å.
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            energy, gradient = xtb(self.atoms.positions)
            self.results = {"energy": energy * units.Hartree, "forces": -gradient * (units.Hartree / units.Bohr)}

    atoms = Atoms(numbers=np.asarray(numbers).reshape(-1), positions=np.asarray(positions, np.float64).reshape(-1, 3))
    atoms.calc = _ASEWrapper()
    e_before = atoms.get_potential_energy() / units.Hartree  # cached: BFGS's first step reuses it
    converged = bool(BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps))
    return Relaxation(atoms.positions.copy(), e_before, atoms.get_potential_energy() / units.Hartree, converged)


def xtb_relax(numbers, positions, steps: int = 50, fmax: float = 0.05, charge: int = 0, uhf: int | None = None):
    """Short GFN2-xTB relaxation of a geometry, to measure its strain: ``(relaxed_positions Å,
    energy_before, energy_after)`` in Hartree; it may stop before reaching ``fmax``
    (:func:`relax` says whether it did)."""
    r = relax(numbers, positions, steps, fmax, charge, uhf)
    return r.positions, r.energy_before, r.energy_after
