"""Low-level decoding of the two published GEOM formats, one record at a time.

* ``iter_json_object``: incremental (key, value) pairs of a large top-level JSON object (the
  ``rdkit_folder`` summary), never the whole file as Python objects;
* ``rdkit_conformer`` / ``msgpack_conformer``: atomic numbers and positions of one conformer
  record of either format, raising on a malformed one (the caller counts it and reads on).

The readers that combine them, and the policy of what to keep, are in ``moldiff.data.geom``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["get_key", "iter_json_object", "msgpack_conformer", "rdkit_conformer"]


def get_key(d: Any, key: str, default: Any = None) -> Any:
    """``d[key]`` whether the file was written with str or bytes keys (``default`` if d is no dict)."""
    if not isinstance(d, dict):
        return default
    if key in d:
        return d[key]
    return d.get(key.encode(), default)


def iter_json_object(path: Path, block: int = 1 << 20) -> Iterator[tuple[str, Any]]:
    """(key, value) pairs of a top-level JSON object, read incrementally.

    ``summary_drugs.json`` is hundreds of MB; ``json.load`` would hold all of it as Python objects.
    """
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buf, pos, eof = "", 0, False

        def need(n_ahead: int = 1) -> bool:
            # Make at least n_ahead unread characters available (False at end of file).
            nonlocal buf, pos, eof
            while len(buf) - pos < n_ahead and not eof:
                more = f.read(block)
                eof = not more
                buf = buf[pos:] + more
                pos = 0
            return len(buf) - pos >= n_ahead

        def skip_ws() -> str:
            nonlocal pos
            while True:
                if not need():
                    raise ValueError(f"{path}: unexpected end of JSON")
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf):
                    return buf[pos]

        def value() -> Any:
            # Parse what is buffered; on failure, or a value touching the buffer's end (a number
            # there may be cut short), read one more block and retry.
            nonlocal pos
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or eof:
                        pos = end
                        return obj
                except json.JSONDecodeError:
                    if eof:
                        raise
                need(len(buf) - pos + 1)

        if skip_ws() != "{":
            raise ValueError(f"{path}: not a JSON object")
        pos += 1
        if skip_ws() == "}":
            return
        while True:
            skip_ws()
            key = value()
            if skip_ws() != ":":
                raise ValueError(f"{path}: expected ':' after key {key!r}")
            pos += 1
            skip_ws()
            yield key, value()
            c = skip_ws()
            pos += 1
            if c == "}":
                return
            if c != ",":
                raise ValueError(f"{path}: expected ',' or '}}', got {c!r}")


def rdkit_conformer(conf: Any) -> tuple[np.ndarray, np.ndarray]:
    """(numbers (n,) int64, positions (n, 3) float32) of an ``rdkit_folder`` conformer (its ``rd_mol``)."""
    mol = get_key(conf, "rd_mol")
    if mol is None:
        raise ValueError("no rd_mol")
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    if mol.GetNumConformers() == 0:
        return numbers[:0], np.zeros((0, 3), np.float32)
    positions = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float32).reshape(-1, 3)
    if len(positions) != len(numbers):
        raise ValueError(f"{len(numbers)} atoms but {len(positions)} positions")
    return numbers, positions


def msgpack_conformer(conf: Any) -> tuple[np.ndarray, np.ndarray]:
    """(numbers (n,) int64, positions (n, 3) float32) of a msgpack conformer (``xyz`` rows [Z, x, y, z])."""
    rows = np.asarray(get_key(conf, "xyz"), dtype=np.float64)
    if rows.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, 3), np.float32)
    if rows.ndim != 2 or rows.shape[1] != 4:
        raise ValueError(f"xyz has shape {rows.shape}, expected (n, 4)")
    z = rows[:, 0]
    if not (np.isfinite(z).all() and (z == np.round(z)).all()):
        raise ValueError("non-integer atomic numbers")
    return z.astype(np.int64), rows[:, 1:].astype(np.float32)
