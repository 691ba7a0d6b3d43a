"""``scripts/evaluate.py`` end to end: table, metrics.json, bad input counted, config errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moldiff.data import QM9_VOCAB, MoleculeSet
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


@pytest.mark.parametrize("value, ok", [(None, 0), (3, 3), (-1, None), ("many", None), (2.5, None), (True, None)])
def test_count_options_take_null_as_off_and_refuse_the_rest(value, ok):
    from omegaconf import OmegaConf

    from moldiff.jobs.evaluate import count

    cfg = OmegaConf.create({"xtb": value})
    if ok is None:
        with pytest.raises(ValueError, match="xtb must be a whole number"):
            count(cfg, "xtb")
    else:
        assert count(cfg, "xtb") == ok


def test_reference_size_has_no_off():
    from omegaconf import OmegaConf

    from moldiff.jobs.evaluate import count

    with pytest.raises(ValueError, match="reference_max must be a whole number >= 1"):
        count(OmegaConf.create({"reference_max": None}), "reference_max", least=1)


def test_cli_bad_count_is_one_line(tmp_path):
    p = _run("input=qm9:test", "reference=null", "novelty=null", "posebusters=-2")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == "error: posebusters must be a whole number >= 0 (0 or null: off), got -2"
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("value", [0, -1, "abc", True])
def test_bad_posebusters_timeout_is_refused(value):
    from omegaconf import OmegaConf

    from moldiff.jobs.evaluate import check_config

    cfg = OmegaConf.load(ROOT / "configs/common/evaluation.yaml")
    cfg.posebusters_timeout = value
    with pytest.raises(ValueError, match=r"posebusters_timeout must be a number of seconds > 0 \(null: no limit\), got "):
        check_config(cfg)
    for fine in (None, 0.5, 60):
        cfg.posebusters_timeout = fine
        check_config(cfg)


def _strict_json(text):
    def reject(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=reject)


# Carbon with six hydrogens 0.6 A away: no protocol finds a valid molecule in it.
CH6 = (np.array([6, 1, 1, 1, 1, 1, 1]), 0.6 * np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float))


def test_rates_over_nothing_are_undefined_not_zero(tmp_path):
    write_xyz(tmp_path / "ch6.xyz", MoleculeSet.from_list([CH6, CH6]))
    out = tmp_path / "m.json"
    p = _run(f"input={tmp_path / 'ch6.xyz'}", "reference=null", "novelty=null", "workers=1", f"output={out}", f"hydra.run.dir={tmp_path}")
    assert p.returncode == 0, p.stderr[-2000:]
    m = _strict_json(out.read_text())
    for proto in ("edm", "corrected"):
        assert m[proto]["validity"] == 0.0 and m[proto]["uniqueness"] is None  # 0 of 0 valid molecules is not 0 % unique
    row = next(line for line in p.stdout.splitlines() if line.startswith("uniqueness"))
    assert row.split()[1:] == ["n/a", "n/a"]
    # novelty over no unique molecule; atom stability over no evaluated atom (the one record is rejected)
    r = evaluate(MoleculeSet.from_list([CH6]), QM9_VOCAB, workers=1, train_smiles={"edm": set(), "corrected": set()})
    assert r["edm"]["novelty"] is None and r["corrected"]["novelty"] is None
    lost = evaluate(MoleculeSet.from_list([(np.array([6]), np.array([[np.nan, 0, 0]]))]), QM9_VOCAB, workers=1)
    assert lost["n_evaluated"] == 0 and lost["edm"]["atom_stability"] is None and lost["edm"]["molecule_stability"] == 0.0


def test_metrics_json_is_strict_when_a_distance_is_undefined(tmp_path):
    apart = (np.array([1, 1, 1]), np.array([[0.0, 0, 0], [6, 0, 0], [0, 6, 0]]))  # bare H atoms: no bond to measure
    write_xyz(tmp_path / "h.xyz", MoleculeSet.from_list([apart, apart]))
    out = tmp_path / "m.json"
    p = _run(f"input={tmp_path / 'h.xyz'}", "novelty=null", "workers=1", f"output={out}", f"hydra.run.dir={tmp_path}")
    assert p.returncode == 0, p.stderr[-2000:]
    m = _strict_json(out.read_text())
    assert m["distribution"]["bond_length_w1"]["weighted_mean"] is None
    assert "bond length W1 n/a" in p.stdout


def test_input_with_nothing_to_evaluate_is_a_one_line_error(tmp_path):
    garbage = tmp_path / "notes.sdf"
    garbage.write_text("hello world\nthis is not a molecule\n$$$$\nsecond record\nstill not\n$$$$\n")
    out = tmp_path / "m.json"
    p = _run(f"input={garbage}", "reference=null", "novelty=null", "workers=1", f"output={out}", f"hydra.run.dir={tmp_path}")
    assert p.returncode == 2 and not out.exists()
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    assert p.stderr.startswith("error: ") and "nothing in it could be evaluated" in p.stderr
    assert "2 records, 2 rejected (unreadable_record=2)" in p.stderr
    p = _run(f"input={tmp_path / 'missing.sdf'}", "reference=null", "novelty=null", f"hydra.run.dir={tmp_path}")
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr


def test_table_reports_posebusters_counts():
    from moldiff.jobs.evaluate import format_table

    result = {"n_molecules": 5, "n_evaluated": 5, "vocabulary": "geom", "input": {"rejected": {}, "flagged": {}},
              "posebusters": {"pb_valid": 0.5, "n_checked": 2, "n_failed_to_check": 3, "n_timed_out": 1}}
    lines = format_table(result).splitlines()
    assert "PoseBusters: 50.00 % pass every check, of 2 checked; 3 could not be checked, 1 of them timed out" in lines
    result["posebusters"] |= {"pb_valid": float("nan"), "n_checked": 0, "n_timed_out": 0}
    assert "PoseBusters: none checked; 3 could not be checked" in format_table(result).splitlines()


def test_an_sdf_input_is_told_that_its_bonds_are_re_derived(tmp_path, capsys):
    """Issue 32: evaluate.py ignored an SDF's bonds and re-perceived them without saying so."""
    from hydra import compose, initialize_config_dir

    from conftest import embedded
    from moldiff.io.convert import to_rdkit
    from moldiff.io.writers import write_sdf
    from moldiff.jobs.evaluate import SDF_NOTE, run_evaluation

    write_sdf(tmp_path / "in.sdf", to_rdkit(MoleculeSet.from_list([embedded("CCO")])))
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("evaluate", [f"input={tmp_path / 'in.sdf'}", "reference=null", "novelty=null", "workers=1",
                                   f"output={tmp_path / 'm.json'}"])
    run_evaluation(cfg, tmp_path)
    assert SDF_NOTE in capsys.readouterr().out.splitlines()
    assert SDF_NOTE.startswith("input bonds: the edm and corrected protocols derive bonds from the coordinates")
