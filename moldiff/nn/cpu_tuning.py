"""Process-wide CPU memory settings for training and sampling (not part of any model).

``tune_cpu_allocator()`` changes glibc's malloc and oneDNN's caches for the whole process;
``tune_once()`` applies it the first time a process asks, which ``DiffusionModel.load`` and
``DiffusionModel.sample`` do for a CPU model (the Python API ran up to 4x slower than the scripts
without it). ``MOLDIFF_CPU_TUNING=0`` leaves the process as it is. ``docs/performance.md`` has the
measurements behind it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["tune_cpu_allocator", "tune_once", "tuned"]

_tuned: bool | None = None  # None: not asked yet; else what tune_cpu_allocator returned


def tune_cpu_allocator() -> bool:
    """Process-wide CPU memory settings for a training or sampling job; call it once, first.

    1. Keep freed memory in the process (glibc malloc) instead of returning it to the OS. By
       default glibc serves every block above a threshold (at most 32 MB) with a fresh ``mmap``
       and unmaps it on free, so every new (E, H) activation of the EGNN is paged in again, a
       large share of a CPU training step. This sets ``M_MMAP_MAX = 0`` (no mmap'd blocks), a
       2 GB trim threshold and 64 MB top pad, the ``mallopt`` equivalent of the usual
       jemalloc/tcmalloc advice for PyTorch on CPU.
    2. Bound oneDNN's caches (``DNNL_PRIMITIVE_CACHE_CAPACITY`` and ideep's
       ``LRU_CACHE_CAPACITY``, unless already set). bfloat16 products go through oneDNN, which
       keeps state per input shape, 1024 shapes by default; every batch has a new edge count, so
       without the caps a bf16 training run keeps growing. A new shape misses the cache anyway,
       so the caps cost nothing. They must be set before the first bf16 product of the process.

    Returns False where (1) does not apply (not glibc).
    """
    for var in ("DNNL_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(var, "64")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
    return bool(mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) and mallopt(M_TOP_PAD, 64 << 20))


def tune_once() -> bool:
    """``tune_cpu_allocator()`` the first time it is asked for in this process; later calls do
    nothing. Off with the environment variable ``MOLDIFF_CPU_TUNING=0``."""
    global _tuned
    if _tuned is None:
        _tuned = os.environ.get("MOLDIFF_CPU_TUNING", "1") != "0" and tune_cpu_allocator()
    return _tuned


def tuned() -> bool:
    """Whether this process's allocator has been tuned by ``tune_once``."""
    return bool(_tuned)
