"""The interruption both resumable-build tests (test_conformers, test_moses) stage: the build
module's ``build_chunk`` stopped at one chunk as a ^C would, then counted on the rerun."""

import pytest


def interrupt_at(monkeypatch, module, chunk: int, build) -> None:
    """Run ``build()`` with ``module.build_chunk`` raising KeyboardInterrupt at ``chunk``."""
    real = module.build_chunk

    def interrupted(task):
        if task[0] == chunk:
            raise KeyboardInterrupt  # as a ^C in the middle of the build
        return real(task)

    monkeypatch.setattr(module, "build_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build()
    monkeypatch.setattr(module, "build_chunk", real)


def count_chunks(monkeypatch, module) -> list:
    """From now on ``module.build_chunk`` records each chunk it builds in the returned list."""
    real, calls = module.build_chunk, []
    monkeypatch.setattr(module, "build_chunk", lambda task: calls.append(task[0]) or real(task))
    return calls
