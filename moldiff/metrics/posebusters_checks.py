"""Optional PoseBusters molecule checks (``pip install moldiff[extra]``), run offline with ``config="mol"``."""

from __future__ import annotations

import logging
import math
import sys
import warnings
from contextlib import contextmanager

import numpy as np


def _require_posebusters():
    try:
        from posebusters import PoseBusters
    except ImportError as err:  # optional dependency: fail with the fix, not a bare ModuleNotFoundError
        raise ImportError(
            "PoseBusters checks need posebusters: `pip install posebusters` (or `pip install moldiff[extra]`)."
        ) from err
    return PoseBusters


@contextmanager
def _quiet():
    """Silence PoseBusters' per-molecule log warnings and RDKit's messages, then restore the previous levels."""
    import rdkit
    from rdkit import rdBase

    # posebusters routes RDKit's C++ log into the Python logger "rdkit"; both would otherwise reach stderr.
    loggers = [logging.getLogger(name) for name in ("posebusters", "rdkit")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    # posebusters re-points rdkit.log_handler at whatever sys.stderr is when it finishes and flushes it on the next
    # call; if that stream has since been closed (redirect_stderr, pytest's capsys) every InChI check then fails.
    # Start from an open stream and put back the one we found.
    handler = getattr(rdkit, "log_handler", None)
    if handler is not None and getattr(handler.stream, "closed", False):
        handler.stream = sys.stderr
    stream = getattr(handler, "stream", None)
    block = rdBase.BlockLogs()  # noqa: F841 - blocks RDKit logging while it is alive
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        del block
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if handler is not None:
            handler.stream = stream


def _unusable(mol) -> str | None:
    """Why PoseBusters cannot meaningfully check ``mol`` (None if it can)."""
    from rdkit import Chem

    if not isinstance(mol, Chem.Mol):
        return f"not an RDKit Mol ({type(mol).__name__})"
    if mol.GetNumAtoms() == 0:
        return "no atoms"
    if mol.GetNumConformers() == 0:
        return "no conformer"
    # NaN coordinates pass PoseBusters' distance checks (NaN comparisons are False), so catch them here.
    if not np.isfinite(mol.GetConformer().GetPositions()).all():
        return "non-finite coordinates"
    return None


def posebusters_summary(mols: list, config: str = "mol") -> dict:
    """Fraction of molecules passing each PoseBusters check, and all of them (``pb_valid``).

    Args:
        mols: sanitized RDKit molecules with explicit hydrogens and a 3D conformer (Å).
        config: PoseBusters configuration; ``"mol"`` (default) includes the energy-ratio check, which embeds a
            50-conformer ensemble per distinct molecule (cached by InChI); ``"mol_fast"`` skips it.

    Returns:
        ``{check_name: pass_rate, ..., "pb_valid": rate, "n_checked": int, "n_failed_to_check": int,
        "failures": [(index, reason), ...]}``. Rates are over the ``n_checked`` molecules PoseBusters returned a
        row for; a check it could not evaluate (NaN) counts as not passed. Molecules that raise, return no row, or
        are unusable (no conformer, non-finite coordinates, not a Mol) are counted in ``n_failed_to_check``.
        Rates are NaN when nothing was checked.
    """
    busters = _require_posebusters()(config=config)
    rows: list[dict] = []
    failures: list[tuple[int, str]] = []
    with _quiet():
        for i, mol in enumerate(mols):
            reason = _unusable(mol)
            if reason is None:
                # One molecule per call keeps the row <-> molecule mapping exact and isolates exceptions;
                # it costs no more than one batched call (PoseBusters loops over molecules either way).
                try:
                    df = busters.bust(mol_pred=[mol])
                    reason = None if len(df) == 1 else f"PoseBusters returned {len(df)} rows"
                except Exception as err:  # noqa: BLE001 - any PoseBusters failure is a per-molecule outcome
                    reason = f"{type(err).__name__}: {err}"
            if reason is not None:
                failures.append((i, reason))
                continue
            # Only an explicit True passes; NaN / pd.NA (check not evaluated) does not.
            rows.append({col: isinstance(val, (bool, np.bool_)) and bool(val) for col, val in df.iloc[0].items()})

    columns = list(dict.fromkeys(col for row in rows for col in row))
    n = len(rows)
    summary: dict = {col: sum(row.get(col, False) for row in rows) / n if n else math.nan for col in columns}
    summary["pb_valid"] = sum(all(row.get(col, False) for col in columns) for row in rows) / n if n else math.nan
    summary["n_checked"] = n
    summary["n_failed_to_check"] = len(failures)
    summary["failures"] = failures
    return summary
