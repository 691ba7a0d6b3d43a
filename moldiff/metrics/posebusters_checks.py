"""Optional PoseBusters molecule checks (``pip install moldiff[extra]``), run offline with ``config="mol"``."""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import sys
import time
import warnings
from contextlib import contextmanager
from multiprocessing.connection import wait

import numpy as np

# Seconds one molecule may take by default: real drug-like molecules take 0.2 s (45 atoms) to 19 s (108 atoms with
# H, nine stereocentres), docs/evaluation.md; GEOM's largest have 181 atoms.
DEFAULT_TIMEOUT = 120.0
_START_TIMEOUT = 300.0  # importing PoseBusters (pandas, RDKit) in a fresh process, on a busy machine


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


def check_timeout(value, name: str = "timeout") -> None:
    """A per-molecule limit is a number of seconds > 0, or None / null for none."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise ValueError(f"{name} must be a number of seconds > 0 (null: no limit), got {value!r}")


def _unusable(mol) -> str | None:
    """Why PoseBusters cannot meaningfully check ``mol`` (None if it can)."""
    from rdkit import Chem

    if mol is None:
        return "no molecule"  # e.g. no bond structure was found for it
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


def _row(df) -> dict:
    """PoseBusters' one-row result as plain booleans: only an explicit True passes; NaN / pd.NA (check not
    evaluated) does not."""
    return {col: isinstance(val, (bool, np.bool_)) and bool(val) for col, val in df.iloc[0].items()}


def _bust_one(busters, mol) -> tuple[dict | None, str | None]:
    """(row, None) for a molecule PoseBusters checked, (None, reason) for one it could not."""
    # One molecule per call keeps the row <-> molecule mapping exact and isolates exceptions;
    # it costs no more than one batched call (PoseBusters loops over molecules either way).
    try:
        df = busters.bust(mol_pred=[mol])
    except Exception as err:  # noqa: BLE001 - any PoseBusters failure is a per-molecule outcome
        return None, f"{type(err).__name__}: {err}"
    return (_row(df), None) if len(df) == 1 else (None, f"PoseBusters returned {len(df)} rows")


def _serve(conn, config: str) -> None:
    """Worker process: check the molecules it is sent, one at a time, until the pipe closes."""
    from rdkit import Chem

    busters = _require_posebusters()(config=config)
    conn.send("ready")
    with _quiet():
        while True:
            try:
                data = conn.recv()
            except EOFError:
                return
            conn.send(_bust_one(busters, Chem.Mol(data)))


class _Worker:
    """PoseBusters in a process of its own, so that a molecule it never finishes (its energy check embeds a
    50-conformer ETKDG ensemble, which can run for many minutes on a distorted molecule) costs ``timeout``
    seconds and a fresh worker, not the whole evaluation. Spawned, not forked: RDKit's embedding is multithreaded.
    One molecule at a time: ``submit``, then ``receive`` once ``conn`` is readable, or ``expire`` after ``deadline``."""

    def __init__(self, config: str, timeout: float | None):
        self.config, self.timeout = config, timeout
        self.conn = self.proc = None
        self.deadline = math.inf

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, self.config), daemon=True)
        self.proc.start()
        child.close()
        # Importing PoseBusters takes seconds; that is not the molecule's time.
        if not self.conn.poll(_START_TIMEOUT):
            self.close(kill=True)
            raise RuntimeError(f"the PoseBusters worker did not start within {_START_TIMEOUT:g} s")
        try:
            self.conn.recv()
        except EOFError:
            self.close(kill=True)
            raise RuntimeError("the PoseBusters worker failed to start") from None

    def submit(self, mol) -> None:
        from rdkit import Chem

        if self.proc is None:
            self._start()
        # Coordinates travel as doubles: RDKit's default pickle rounds them to float32.
        data = mol.ToBinary(Chem.PropertyPickleOptions.CoordsAsDouble)
        self.deadline = math.inf if self.timeout is None else time.monotonic() + self.timeout
        try:
            self.conn.send(data)
        except OSError:  # a dead worker shows as readable (EOF), and receive() counts it
            pass

    def receive(self) -> tuple[dict | None, str | None]:
        try:
            return self.conn.recv()
        except (EOFError, OSError):  # the worker died (a crash in RDKit's C++, killed from outside)
            self.close(kill=True)
            return None, "PoseBusters worker died"

    def expire(self) -> tuple[None, str]:
        self.close(kill=True)
        return None, f"timed out after {self.timeout:g} s"

    def close(self, kill: bool = False) -> None:
        """Stop the worker: closing the pipe ends its loop; ``kill`` (or a worker that does not end soon) kills it."""
        if self.proc is not None:
            self.conn.close()
            self.proc.join(0 if kill else 10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
        self.conn = self.proc = None


def _check_all(mols: list, todo: list[int], workers: list[_Worker]) -> dict:
    """{index: (row, reason)} for the molecules ``todo``, spread over ``workers``, each molecule under its worker's
    time limit. A molecule's outcome does not depend on how many workers there are, unless its check takes close to
    the limit: the limit is wall-clock time, and workers share the cores."""
    queue = iter(todo)
    busy: dict[_Worker, int] = {}
    outcomes: dict = {}
    while True:
        for w in workers:
            if w not in busy and (i := next(queue, None)) is not None:
                w.submit(mols[i])
                busy[w] = i
        if not busy:
            return outcomes
        first = min(w.deadline for w in busy)
        ready = wait([w.conn for w in busy], None if first == math.inf else max(0.0, first - time.monotonic()))
        now = time.monotonic()
        for w in list(busy):
            if w.conn in ready:
                outcomes[busy.pop(w)] = w.receive()
            elif now >= w.deadline:
                outcomes[busy.pop(w)] = w.expire()


def posebusters_summary(
    mols: list, config: str = "mol", timeout: float | None = DEFAULT_TIMEOUT, workers: int = 1
) -> dict:
    """Fraction of molecules passing each PoseBusters check, and all of them (``pb_valid``).

    Args:
        mols: sanitized RDKit molecules with explicit hydrogens and a 3D conformer (Å).
        config: PoseBusters configuration; ``"mol"`` (default) includes the energy-ratio check, which embeds a
            50-conformer ensemble per distinct molecule (cached by InChI); ``"mol_fast"`` skips it.
        timeout: seconds one molecule may take (None: no limit). A molecule that takes longer is counted in
            ``n_failed_to_check`` (and ``n_timed_out``), and the checks go on with the next one.
        workers: processes checking molecules side by side, each molecule under its own time limit. The figures
            do not depend on it, except for a molecule whose check takes close to ``timeout``: the limit is
            wall-clock time and the workers share the cores.

    Returns:
        ``{check_name: pass_rate, ..., "pb_valid": rate, "n_checked": int, "n_failed_to_check": int,
        "n_timed_out": int, "failures": [(index, reason), ...]}``. Rates are over the ``n_checked`` molecules
        PoseBusters returned a row for; a check it could not evaluate (NaN) counts as not passed. Molecules that
        raise, return no row, run past ``timeout``, or are unusable (no conformer, non-finite coordinates, not a
        Mol) are counted in ``n_failed_to_check``. Rates are NaN when nothing was checked.
    """
    check_timeout(timeout)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    _require_posebusters()  # a missing extra fails here, with the fix, not in the worker
    outcomes = {i: (None, reason) for i, mol in enumerate(mols) if (reason := _unusable(mol)) is not None}
    todo = [i for i in range(len(mols)) if i not in outcomes]
    pool = [_Worker(config, timeout) for _ in range(min(workers, len(todo)))]
    try:
        outcomes.update(_check_all(mols, todo, pool))
    finally:
        for w in pool:
            w.close()
    rows = [outcomes[i][0] for i in range(len(mols)) if outcomes[i][1] is None]
    failures = [(i, outcomes[i][1]) for i in range(len(mols)) if outcomes[i][1] is not None]

    columns = list(dict.fromkeys(col for row in rows for col in row))
    n = len(rows)
    summary: dict = {col: sum(row.get(col, False) for row in rows) / n if n else math.nan for col in columns}
    summary["pb_valid"] = sum(all(row.get(col, False) for col in columns) for row in rows) / n if n else math.nan
    summary["n_checked"] = n
    summary["n_failed_to_check"] = len(failures)
    summary["n_timed_out"] = sum(reason.startswith("timed out") for _, reason in failures)
    summary["failures"] = failures
    return summary
