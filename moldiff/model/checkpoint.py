"""Checkpoint files: where the shipped model is, and reading and writing them safely.

A checkpoint is a plain dict (``state_dict`` of tensors, ``hyper_parameters`` and
``moldiff_record`` of plain containers), read with ``torch.load(weights_only=True)``: a file that
carries anything else (a pickled object that could run code) is refused before any of it runs.
Every unreadable file (not a checkpoint, truncated, carrying code) is a ``ValueError`` of one line.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from moldiff.io.writers import atomic_write

SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "qm9_egnn.ckpt"
# The shipped property models (one multi-task network each for the six QM9 properties, trained on
# the first half of QM9 train): the time-conditioned guide g(z_t, t) and the clean evaluator phi_c.
SHIPPED_PROPERTY = {role: SHIPPED.parent / f"qm9_property_{role}.ckpt" for role in ("guide", "evaluator")}
# Diffusion models by name (``ckpt=<name>``): the coordinates-only QM9 model, and the bond model
# (positions, types, charges and bonds; docs/bonds.md).
NAMED = {"shipped": SHIPPED, "qm9-bonds": SHIPPED.parent / "qm9_bonds.ckpt"}


def property_checkpoint_path(ckpt: str | Path, role: str) -> Path:
    """``"shipped"`` (the package's property model for ``role``) or a path; not checked to exist."""
    return SHIPPED_PROPERTY[role] if str(ckpt) == "shipped" else Path(ckpt)


def checkpoint_path(ckpt: str | Path) -> Path:
    """A name of ``NAMED`` ("shipped", "qm9-bonds") or a path, checked to exist."""
    path = NAMED.get(str(ckpt), Path(ckpt))
    if not path.is_file():
        raise FileNotFoundError(f"ckpt: no checkpoint at {path}" + (f" (the {ckpt} model is missing from this install)" if str(ckpt) in NAMED else ""))
    return path


class NotACheckpoint(ValueError):
    """A file that is not a readable checkpoint: not one at all, or truncated or corrupt."""


class RefusedCheckpoint(pickle.UnpicklingError, ValueError):
    """A checkpoint that holds pickled objects beyond weights and plain configs (code could run)."""


def load_file(path: str | Path, map_location="cpu"):
    """``torch.load(weights_only=True)`` with one-line errors (``ValueError``s, which the scripts
    report as one line and exit 2) in place of torch's messages, which suggest turning safe loading
    off (never an option here: a shared file could run code)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        raise NotACheckpoint(f"{path} is not a checkpoint (not the zip archive torch.save writes{'; the file is empty' if not head else ''}); "
                             "nothing in it ran")
    if not zipfile.is_zipfile(path):
        raise NotACheckpoint(f"{path} is truncated or corrupt (a zip archive without its directory; an interrupted copy?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"pickled code ({found.group(1)})" if found else "pickled objects"
        raise RefusedCheckpoint(f"{path}: refused: it holds {what}, not only weights and plain configs; nothing in it ran") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise NotACheckpoint(f"{path} is truncated or corrupt ({type(e).__name__}: {str(e).splitlines()[0][:80]})") from None


def read_checkpoint(ckpt: str | Path, map_location="cpu") -> dict:
    path = checkpoint_path(ckpt)
    data = load_file(path, map_location)
    if not isinstance(data, dict) or not {"state_dict", "hyper_parameters"} <= set(data):
        raise ValueError(f"{path} is not a moldiff checkpoint (no state_dict / hyper_parameters)")
    if data.get("moldiff_compact"):
        data["state_dict"] = expand_compact(data["state_dict"])
    return data


def expand_compact(state: dict) -> dict:
    """A compact export (EMA weights only, float16; ``moldiff.train.export``) as a full state dict:
    float32, with the network's weights set to the EMA's."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    prefix = "ema.module."
    state.update({"net." + k[len(prefix):]: v.clone() for k, v in state.items() if k.startswith(prefix)})
    return state


def write_checkpoint(path: str | Path, data: dict) -> Path:
    """Atomically: an interrupted write leaves no half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        torch.save(data, f)
    return path
