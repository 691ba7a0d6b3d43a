"""Optional GFN2-xTB energies and relaxation strain through ``tblite`` (``pip install moldiff[extra]``).

Units: positions go in and come out in Å; energies are in Hartree and gradients in Hartree/Bohr unless a name
says otherwise (``*_kcal_mol``). tblite itself works in Bohr, so every call converts at this boundary.

Speed: tblite runs OpenMP-parallel; for QM9-sized molecules ``OMP_NUM_THREADS=1`` was about 2x faster than two
threads here, and far faster on a busy machine, so parallelise over molecules (processes) rather than threads.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from ase import units

from moldiff.data.molecules import MoleculeSet

HARTREE_TO_KCAL_MOL = 627.509
ANGSTROM_TO_BOHR = 1.0 / units.Bohr  # ase.units.Bohr is one Bohr in Å


def _require_tblite():
    try:
        from tblite.interface import Calculator
    except ImportError as err:  # optional dependency: fail with the fix, not a bare ModuleNotFoundError
        raise ImportError(
            "xTB metrics need tblite: `pip install tblite` (or `pip install moldiff[extra]`)."
        ) from err
    return Calculator


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # before tblite's OpenMP runtime starts in this worker


def xtb_pool(workers: int):
    """A process pool for xTB work. Spawned, not forked: a worker forked from a process whose
    OpenMP runtime (torch's) is running hangs when tblite starts its own OpenMP work (measured:
    every worker idle forever); each worker runs tblite single-threaded (see the module note)."""
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_one_thread)


def _default_uhf(numbers: np.ndarray, charge: int) -> int:
    """Unpaired electrons: 0 for an even electron count, 1 (a doublet) for an odd one."""
    return int(numbers.sum() - charge) % 2


def _prepare(numbers, positions, charge: int, uhf: int | None):
    numbers = np.asarray(numbers, dtype=np.int32).reshape(-1)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if len(numbers) != len(positions):
        raise ValueError(f"{len(numbers)} atomic numbers but {len(positions)} positions")
    if not np.isfinite(positions).all():
        raise ValueError("non-finite coordinates")
    uhf = _default_uhf(numbers, charge) if uhf is None else int(uhf)
    # tblite silently smears an impossible spin state over fractional occupations; refuse it instead.
    if uhf < 0 or (int(numbers.sum() - charge) - uhf) % 2:
        raise ValueError(f"uhf={uhf} is incompatible with {int(numbers.sum() - charge)} electrons")
    return numbers, positions, uhf


class _XTB:
    """One tblite calculator per molecule, reused across geometries so the SCF restarts from the last density."""

    def __init__(self, numbers, positions, charge: int = 0, uhf: int | None = None, accuracy: float = 1.0):
        calculator_cls = _require_tblite()
        numbers, positions, uhf = _prepare(numbers, positions, charge, uhf)
        self.calc = calculator_cls("GFN2-xTB", numbers, positions * ANGSTROM_TO_BOHR, charge=charge, uhf=uhf)
        self.calc.set("verbosity", 0)  # tblite prints an SCF table per call otherwise
        self.calc.set("accuracy", accuracy)
        self.res = None

    def __call__(self, positions_angstrom: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy (Hartree) and gradient (Hartree/Bohr) at positions in Å."""
        pos = np.asarray(positions_angstrom, dtype=np.float64).reshape(-1, 3)
        if not np.isfinite(pos).all():
            raise ValueError("non-finite coordinates")
        self.calc.update(positions=pos * ANGSTROM_TO_BOHR)
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
    xtb = _XTB(numbers, positions_angstrom, charge, uhf, accuracy)
    return xtb(positions_angstrom)


def _relax(numbers, positions, steps: int, fmax: float, charge: int, uhf: int | None):
    """BFGS relaxation; returns (positions Å, E_before Ha, E_after Ha, reached_fmax)."""
    from ase import Atoms
    from ase.calculators.calculator import Calculator, all_changes
    from ase.optimize import BFGS

    xtb = _XTB(numbers, positions, charge, uhf)

    class _ASEWrapper(Calculator):
        # ASE optimisers want eV and eV/Å.
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            energy, gradient = xtb(self.atoms.positions)
            self.results = {
                "energy": energy * units.Hartree,
                "forces": -gradient * (units.Hartree / units.Bohr),
            }

    atoms = Atoms(numbers=np.asarray(numbers).reshape(-1), positions=np.asarray(positions, np.float64).reshape(-1, 3))
    atoms.calc = _ASEWrapper()
    e_before = atoms.get_potential_energy() / units.Hartree
    converged = bool(BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps))
    e_after = atoms.get_potential_energy() / units.Hartree
    return atoms.positions.copy(), e_before, e_after, converged


def xtb_relax(numbers, positions, steps: int = 50, fmax: float = 0.05, charge: int = 0, uhf: int | None = None):
    """Short GFN2-xTB relaxation (ASE BFGS) of a geometry, to measure its strain.

    Args:
        numbers: (N,) atomic numbers.
        positions: (N, 3) coordinates in Å.
        steps: maximum BFGS steps; the relaxation may stop before reaching ``fmax``.
        fmax: force convergence threshold in eV/Å (ASE's convention).
        charge, uhf: as in :func:`xtb_energy_gradient`.

    Returns:
        ``(relaxed_positions, energy_before, energy_after)``: positions in Å, energies in Hartree.
    """
    pos, e_before, e_after, _ = _relax(numbers, positions, steps, fmax, charge, uhf)
    return pos, e_before, e_after


def _with_charges(molecules):
    """(numbers, positions, given charge or None) per molecule of a ``MoleculeSet`` (its
    ``charge`` property) or of an iterable of pairs / triples; a malformed item is passed on as
    it is, to fail in the caller's per-molecule handling."""
    if isinstance(molecules, MoleculeSet):
        given = molecules.properties.get("charge")
        for m in range(len(molecules)):
            yield (*molecules[m], None if given is None else float(given[m]))
        return
    for mol in molecules:
        yield (*mol, None) if hasattr(mol, "__len__") and len(mol) == 2 else mol


def strain_energies(
    molecules: Iterable,
    steps: int = 50,
    fmax: float = 0.05,
    charge: int = 0,
    uhf: int | None = None,
    require_converged: bool = False,
) -> dict:
    """Relaxation strain ``E_before - E_after`` in kcal/mol for (numbers, positions Å) pairs,
    (numbers, positions, total charge) triples, or a ``MoleculeSet``.

    Each molecule is computed at its own total charge where it has one (a triple's third field,
    the set's ``charge`` property), else at ``charge``: an ion at charge 0 is another species
    (a radical, or an electron too many), so its "strain" would be meaningless. NaN or None =
    not given.

    Every molecule is accounted for: per-molecule lists line up with the input (NaN / None for failures), and each
    failure (xTB error, SCF not converged, bad input) is counted in ``n_failed`` with its reason.
    With ``require_converged`` a relaxation that does not reach ``fmax`` within ``steps`` also counts as failed;
    otherwise its strain is kept (a lower bound) and counted in ``n_unconverged``.

    Returns a dict with ``strain_kcal_mol`` (list), ``converged`` (list of bool or None), ``charge`` (list: the
    total charge each molecule was computed at; None for unreadable input), ``median``, ``mean`` (kcal/mol, over
    evaluated molecules; NaN if none), ``n_evaluated``, ``n_unconverged``, ``n_failed`` and ``failures`` (list of
    (index, reason)).
    """
    strains: list[float] = []
    converged: list[bool | None] = []
    charges: list[int | None] = []
    failures: list[tuple[int, str]] = []
    n_unconverged = 0
    for i, mol in enumerate(_with_charges(molecules)):
        charges.append(None)
        try:
            numbers, positions, given = mol
            if given is None or math.isnan(given):
                given = charge
            if given != int(given):  # 0.5 e is no molecule's charge: a bad property, not a rounding
                raise ValueError(f"total charge {given} is not a whole number")
            charges[-1] = int(given)
            _, e_before, e_after, ok = _relax(numbers, positions, steps, fmax, charges[-1], uhf)
        except ImportError:
            raise  # a missing dependency is the caller's problem, not this molecule's
        except Exception as err:  # noqa: BLE001 - any xTB/ASE failure is a per-molecule outcome to report
            strains.append(math.nan)
            converged.append(None)
            failures.append((i, f"{type(err).__name__}: {err}"))
            continue
        if require_converged and not ok:
            strains.append(math.nan)
            converged.append(False)
            failures.append((i, f"relaxation did not reach fmax={fmax} eV/Å in {steps} steps"))
            continue
        strains.append((e_before - e_after) * HARTREE_TO_KCAL_MOL)
        converged.append(ok)
        n_unconverged += not ok

    values = np.array([s for s in strains if not math.isnan(s)])
    return {
        "strain_kcal_mol": strains,
        "converged": converged,
        "charge": charges,
        "median": float(np.median(values)) if values.size else math.nan,
        "mean": float(values.mean()) if values.size else math.nan,
        "n_evaluated": int(values.size),
        "n_unconverged": n_unconverged,
        "n_failed": len(failures),
        "failures": failures,
    }
