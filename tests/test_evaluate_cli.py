"""``scripts/evaluate.py`` end to end: table, metrics.json, bad input counted, config errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moldiff.data import QM9_VOCAB
from moldiff.io import write_xyz
from moldiff.metrics.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), *args], capture_output=True, text=True, cwd=cwd or ROOT)


def test_cli_matches_library_and_counts_bad_input(tmp_path, qm9_test):
    sub = qm9_test.subset(np.arange(200))
    write_xyz(tmp_path / "good.xyz", sub)
    bad = (
        "3\nNaN coordinates\nC 0 0 nan\nH 0 0 1\nH 0 1 0\n"
        "2\nunknown element\nSe 0 0 0\nH 0 0 1.4\n"
        "0\nempty\n"
        "1\none atom\nC 0 0 0\n"
        "x\nbroken count\n"
    )
    path = tmp_path / "all.xyz"
    path.write_text((tmp_path / "good.xyz").read_text() + bad)
    out = tmp_path / "metrics.json"
    p = _run(f"input={path}", "reference=null", "novelty=null", "workers=1", f"output={out}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "molecule stability" in p.stdout
    m = json.loads(out.read_text())
    assert m["input"]["n_records"] == 205
    assert m["input"]["rejected"] == {"nonfinite_coordinates": 1, "unknown_element": 1, "empty_molecule": 1, "unreadable_record": 1}
    assert m["input"]["flagged"] == {"single_atom": 1}
    assert m["n_molecules"] == 205 and m["n_evaluated"] == 201
    lib = evaluate(sub, QM9_VOCAB, reference=None, workers=1)
    # The 200 good molecules + a lone C (unstable, but valid for RDKit) over 205 records.
    assert m["edm"]["molecule_stability"] == pytest.approx(lib["edm"]["molecule_stability"] * 200 / 205)
    assert m["edm"]["validity"] == pytest.approx((lib["edm"]["validity"] * 200 + 1) / 205)


def test_cli_rejects_bad_config(tmp_path):
    p = _run("input=qm9:test", "no_such_key=1")
    assert p.returncode != 0 and "no_such_key" in p.stderr
    p = _run("input=qm9:test", "protocols=[edm,bogus]", "reference=null", "novelty=null")
    assert p.returncode != 0 and "bogus" in p.stderr
    p = _run(f"input={tmp_path / 'missing.sdf'}", "reference=null", "novelty=null")
    assert p.returncode != 0 and "neither a file" in p.stderr
