"""The Python API against ``scripts/sample.py``: the same molecules, back to back.

python benchmarks/bench_python_api.py [--n 20] [--steps 300] [--seed 0] [--rounds 2]

Each round runs, each in a fresh process (the allocator settings are process-wide):

* ``DiffusionModel.load("shipped").sample(n, steps=..., seed=...)``, timed around ``sample``;
* ``scripts/sample.py n=... steps=... seed=... evaluation=null``, its own "sampled ... in X s".

It checks that both made the same molecules and prints the ratio of the medians; the issue's bar
(issue 32) is API / script <= 1.15.
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

API = """
import sys, time
import numpy as np
from moldiff.model.diffusion import DiffusionModel
n, steps, seed, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = DiffusionModel.load("shipped")
t0 = time.perf_counter()
mols = model.sample(n, steps=steps, seed=seed, progress=False)
print(f"api {time.perf_counter() - t0:.3f}")
np.save(out, mols.positions)
"""


def run_api(n, steps, seed, tmp) -> tuple[float, "object"]:
    import numpy as np

    out = Path(tmp) / "api.npy"
    p = subprocess.run([sys.executable, "-c", API, str(n), str(steps), str(seed), str(out)], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        sys.exit(p.stderr[-3000:])
    return float(re.search(r"api ([\d.]+)", p.stdout).group(1)), np.load(out)


def run_script(n, steps, seed, tmp) -> tuple[float, "object"]:
    out = Path(tmp) / "script"
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "sample.py"), f"n={n}", f"steps={steps}", f"seed={seed}",
                        "evaluation=null", f"output={out}"], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        sys.exit(p.stderr[-3000:])
    seconds = float(re.search(r"sampled \d+ molecules in ([\d.]+) s", p.stdout).group(1))
    return seconds, _xyz_positions(out / "samples.xyz")


def _xyz_positions(path: Path):
    import numpy as np

    rows = [line.split()[1:] for line in path.read_text().splitlines() if len(line.split()) == 4]
    return np.array(rows, np.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    api, script = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):  # alternate, so a change in the machine's load hits both
            a, pos_a = run_api(args.n, args.steps, args.seed, tmp)
            s, pos_s = run_script(args.n, args.steps, args.seed, tmp)
            same = pos_a.shape == pos_s.shape and float(abs(pos_a - pos_s).max()) < 1e-5
            print(f"round {r}: API {a:.1f} s, script {s:.1f} s, same molecules: {same}")
            if not same:
                sys.exit("the API and the script made different molecules: the comparison is void")
            api.append(a)
            script.append(s)
    ratio = statistics.median(api) / statistics.median(script)
    print(f"n={args.n} steps={args.steps}: API {statistics.median(api):.1f} s, script {statistics.median(script):.1f} s "
          f"(medians of {args.rounds}); API / script = {ratio:.2f} (bar: <= 1.15)")


if __name__ == "__main__":
    main()
