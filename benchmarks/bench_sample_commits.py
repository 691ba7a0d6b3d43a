"""Sampling speed of this tree against an older commit, back to back (issue 33 item 6).

python benchmarks/bench_sample_commits.py [--old 4d094be] [--reps 2] [n=200 steps=300 ...]

Checks ``--old`` out into a temporary git worktree (sharing this tree's QM9 cache), then runs
``scripts/sample.py`` with the same overrides from each tree in turn, ``--reps`` times, and reads
the sampling time from each run's "sampled N molecules in X s" line. Each tree samples its own
shipped checkpoint (4d094be's is the first shipped model; the network is the same size). Run it
on an otherwise idle machine (pause any training with ``kill -STOP``). Appends to
``benchmarks/results_sampling_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sample_seconds(tree: Path, overrides: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        p = subprocess.run([sys.executable, "scripts/sample.py", f"output={tmp}", f"hydra.run.dir={tmp}/h", *overrides],
                           capture_output=True, text=True, cwd=tree, env=env, check=False)
    m = re.search(r"sampled \d+ molecules in ([\d.]+) s", p.stdout + p.stderr)
    if p.returncode != 0 or m is None:
        sys.exit(f"{tree}: sample.py failed\n{(p.stdout + p.stderr)[-3000:]}")
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", default="4d094be")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--data", default=str(ROOT / "benchmarks" / "results_sampling_speed.json"))
    a, overrides = ap.parse_known_args()
    overrides = overrides or ["n=200", "steps=300"]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), a.old], check=True, capture_output=True, cwd=ROOT)
        try:
            (old / "datasets" / "qm9" / "cache").symlink_to(ROOT / "datasets" / "qm9" / "cache")
            times = {a.old: [], "this tree": []}
            for _ in range(a.reps):
                for name, tree in ((a.old, old), ("this tree", ROOT)):
                    times[name].append(sample_seconds(tree, overrides))
                    print(f"{name}: {times[name][-1]} s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    path = Path(a.data)
    data = json.loads(path.read_text()) if path.is_file() else {"about": __doc__.strip().splitlines()[0], "runs": []}
    data["runs"].append({"command": "python benchmarks/bench_sample_commits.py " + " ".join([f"--old {a.old}", f"--reps {a.reps}", *overrides]),
                         "this_tree": head + (" + uncommitted changes" if dirty else ""), "seconds": times,
                         "machine": f"{platform.machine()}, {os.cpu_count()} cores; background training paused"})
    path.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
