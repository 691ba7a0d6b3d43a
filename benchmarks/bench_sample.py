"""Wall time of ``scripts/sample.py`` (defaults unless overridden), end to end and sampling alone.

python benchmarks/bench_sample.py [n=1000] [sampler=...] [steps=...] [any sample.py override]

Runs the real command in a subprocess on an otherwise idle machine and prints the sampling time
(from the script's own "sampled ... in X s" line) and the total wall time, which also covers
start-up, writing SDF/XYZ/PNG and the evaluation (training SMILES and reference statistics load
from their caches after the first run).
"""

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(overrides):
    if not any(o.startswith("n=") for o in overrides):
        overrides = ["n=1000", *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, str(ROOT / "scripts" / "sample.py"), f"output={tmp}", f"hydra.run.dir={tmp}/hydra", *overrides],
                           capture_output=True, text=True, cwd=ROOT)
        total = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(p.stderr[-3000:])
    m = re.search(r"sampled (\d+) molecules in ([\d.]+) s \((.*)\)", p.stdout)
    table = p.stdout[p.stdout.find("metric (%)"):].split("\n\n")[0]
    print(f"{' '.join(overrides)}: sampling {m.group(2)} s ({m.group(3)}), total {total:.0f} s")
    print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
