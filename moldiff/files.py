"""The one atomic file write: every file the package writes goes through ``atomic_write``.

The content goes to a temporary file of a unique name in the target's folder (the same file system,
so the rename is atomic) and is renamed over the target only when complete. A reader sees the old
file or the new one, never half of one; two runs writing the same path at once each rename a whole
file of their own (the last rename wins); any exception, an interruption included, removes the
temporary file and leaves the old target as it was. No fsync: the guarantee is against
interruptions and concurrent writers, not power loss.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["AtomicFile", "atomic_write"]

MODE = 0o644  # mkstemp makes 0o600 files; outputs are meant to be read by others


class AtomicFile:
    """An open temporary file beside ``path`` that ``commit()`` renames over ``path`` and
    ``discard()`` removes. As a context manager it yields the open file and commits when the
    block finishes, discards when it raises. The explicit calls serve writers whose file stays
    open across calls (a SMILES list written molecule by molecule)."""

    def __init__(self, path: str | os.PathLike, mode: str = "w", **open_kwargs):
        if "w" not in mode:
            raise ValueError(f"atomic_write writes a new file: mode must be 'w' or 'wb', got {mode!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            self.file = os.fdopen(fd, mode, **open_kwargs)
        except BaseException:
            os.close(fd)
            os.unlink(self.tmp)
            raise

    def commit(self) -> Path:
        try:
            self.file.close()
            os.chmod(self.tmp, MODE)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        self.file.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:  # committed already, or discarded twice
            pass

    def __enter__(self):
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> AtomicFile:
    """``with atomic_write(path, "wb") as f: ...``: ``path`` appears, complete, only if the block
    finishes. ``open_kwargs`` go to ``open`` (``encoding``, ``newline``)."""
    return AtomicFile(path, mode, **open_kwargs)
