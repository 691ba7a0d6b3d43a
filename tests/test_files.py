"""moldiff.files.atomic_write, the one atomic write: concurrent writers to one path, an exception
mid-write, the file mode, the explicit commit/discard form."""

import stat
import threading
import time

import pytest

from moldiff.files import AtomicFile, atomic_write


def _temps(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_two_concurrent_writers_to_one_path(tmp_path):
    path = tmp_path / "out" / "x.txt"
    contents = {k: "".join(f"{k} line {i}\n" for i in range(2000)) for k in "ab"}
    both_open, both_looked, errors, temps = threading.Barrier(2), threading.Barrier(2), [], []

    def write(k):
        try:
            with atomic_write(path) as f:
                both_open.wait(timeout=10)
                temps.append(len(_temps(path.parent)))  # both temporary files exist at once: two names
                both_looked.wait(timeout=10)
                for i, line in enumerate(contents[k].splitlines(keepends=True)):
                    f.write(line)
                    if i % 500 == 0:
                        f.flush()
                        time.sleep(0.01)  # let the other writer run in between
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(k,)) for k in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and temps == [2, 2]
    assert path.read_text() in contents.values()  # one writer's whole content, never a mix
    assert _temps(path.parent) == [] and [p.name for p in path.parent.iterdir()] == ["x.txt"]


def test_exception_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.bin"
    with atomic_write(path, "wb") as f:
        f.write(b"old content")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp's 0o600 would hide it from other users
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path, "wb") as f:
            f.write(b"new cont")
            raise KeyboardInterrupt  # as a ^C in the middle of the write
    assert path.read_bytes() == b"old content" and _temps(tmp_path) == []


def test_commit_and_discard(tmp_path):
    path = tmp_path / "sub" / "list.txt"  # the folder is made
    kept = AtomicFile(path, encoding="utf-8")
    kept.file.write("CCO\n")
    assert not path.exists()  # nothing appears before the commit
    assert kept.commit() == path and path.read_text(encoding="utf-8") == "CCO\n"
    dropped = AtomicFile(path)
    dropped.file.write("half")
    dropped.discard()
    dropped.discard()  # twice is harmless (a failure path may run after another)
    assert path.read_text() == "CCO\n" and _temps(path.parent) == []
    with pytest.raises(ValueError, match="mode"):
        atomic_write(path, "a")
