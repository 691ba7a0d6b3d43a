"""Optional GFN2-xTB relaxation strain of many molecules (``pip install moldiff[extra]``); the xTB
calls themselves (single points, the relaxation, units) are ``moldiff.chem.xtb``'s.

Energies are in Hartree unless a name says otherwise (``*_kcal_mol``).
"""

from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from ase import units

from moldiff.chem.xtb import relax, single_thread_worker, xtb_energy_gradient, xtb_relax  # noqa: F401 - re-exported
from moldiff.data.molecules import MoleculeSet

HARTREE_TO_KCAL_MOL = 627.509
ANGSTROM_TO_BOHR = 1.0 / units.Bohr  # ase.units.Bohr is one Bohr in Å


def xtb_pool(workers: int):
    """A process pool for xTB work. Spawned, not forked: a worker forked from a process whose
    OpenMP runtime (torch's) is running hangs when tblite starts its own OpenMP work (measured:
    every worker idle forever); each worker runs tblite single-threaded (see ``moldiff.chem.xtb``)."""
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=single_thread_worker)


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
            _, e_before, e_after, ok = relax(numbers, positions, steps, fmax, charges[-1], uhf)
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
