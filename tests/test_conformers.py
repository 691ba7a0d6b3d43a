"""Conformer datasets from SMILES (moldiff.chem.conformers, moldiff.jobs.build_conformers,
scripts/build_conformers.py): bad input counted by reason, GEOM's cache format with charges, resume
after an interruption gives the same bytes, conformers fixed by the seed."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from moldiff.chem import conformers as C
from moldiff.jobs import build_conformers as B
from chunked_build import count_chunks, interrupt_at
from moldiff.data import MoleculeSet
from moldiff.data.geom import cache_dtypes, load_geom, load_geom_formal_charges, load_geom_smiles
from moldiff.data.sources import load_source

ROOT = Path(__file__).resolve().parents[1]
# built: ethanol, methylammonium (+1); left out: one of each molecule-level reason
SMILES = ["CCO", "C[NH3+]", "not_a_smiles(", "C[Se]C", "CCO.O", "[Cl-]"]
K = 2


@pytest.fixture
def smiles_file(tmp_path):
    path = tmp_path / "mols.smi"
    path.write_text("smiles\n" + "\n".join(SMILES) + "\n")
    return path


def _build(src, out, **kw):
    settings = C.ConformerSettings(conformers=K, seed=kw.pop("seed", 0))
    # split seed 1 puts rows {0, 2, 4} in val: ethanol (row 0) there, methylammonium (row 1) in train
    return B.build_conformer_dataset(src, out, settings, **{"workers": 1, "chunk": 2, "val_fraction": 0.5, "split_seed": 1, **kw})


def _files(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.parent.iterdir())
            if p.name.endswith((".npz", ".smiles.txt"))}


def test_tiny_build_counts_by_reason_and_loads(smiles_file, tmp_path):
    out = tmp_path / "out" / "mols.npz"
    s = _build(smiles_file, out)
    assert s["smiles"] == 6 and s["molecules_built"] == 2 and s["conformers_written"] == 2 * K
    assert s["molecules"]["n_records"] == 6
    assert s["molecules"]["rejected"] == {C.UNPARSABLE: 1, C.UNKNOWN_ELEMENT: 1, C.FRAGMENTS: 1, C.UNSUPPORTED_CHARGE: 1}
    assert s["conformers"]["n_records"] == 2 * K and s["conformers"]["rejected"] == {}
    assert json.loads(B.report_path(out).read_text()) == s
    assert not out.with_name(out.name + ".parts").exists()  # shards are gone once merged

    # GEOM's cache format, with the charge fields, loaded by the GEOM reader and the geom: source
    with np.load(out, allow_pickle=False) as f:
        assert {k: f[k].dtype for k in f.files} == {k: np.dtype(v) for k, v in cache_dtypes(charges=True).items()}
    mols, _, vocab = load_source(f"geom:{out}")
    assert vocab.name == "geom" and len(mols) == 2 * K
    assert load_geom_smiles(out) == ["CCO", "C[NH3+]"]
    p = mols.properties
    np.testing.assert_array_equal(p["mol_id"], [0, 0, 1, 1])
    np.testing.assert_array_equal(p["conformer_rank"], [0, 1, 0, 1])
    np.testing.assert_array_equal(p["charge"], [0, 0, 1, 1])
    np.testing.assert_array_equal(mols.n_atoms, [9, 9, 8, 8])  # explicit hydrogens
    assert np.all(p["energy"][[0, 2]] <= p["energy"][[1, 3]])  # rank 0 is the lowest energy
    np.testing.assert_allclose(p["boltzmann_weight"][:2].sum(), 1.0)
    formal = load_geom_formal_charges(out)
    assert formal.shape == mols.numbers.shape
    np.testing.assert_array_equal(np.add.reduceat(formal, mols.offsets[:-1]), p["charge"])
    np.testing.assert_array_equal(mols.numbers[formal != 0], [7, 7])  # the N+ of each methylammonium conformer
    old = tmp_path / "old.npz"  # a cache without the charge fields still loads
    MoleculeSet(mols.numbers[:9], mols.positions[:9], [0, 9], {"mol_id": np.zeros(1, np.int64)}).save(old)
    assert load_geom_formal_charges(old) is None and set(load_geom(old).properties) == {"mol_id"}

    # the split: by molecule (input row), each side a cache of its own
    assert B.val_rows(6, 0.5, 1) == {0, 2, 4}
    train, val = (B.split_paths(out)[k] for k in ("train", "val"))
    assert load_geom_smiles(train) == ["C[NH3+]"] and load_geom_smiles(val) == ["CCO"]
    np.testing.assert_array_equal(load_geom(train).properties["charge"], [1, 1])
    np.testing.assert_array_equal(load_geom(val).positions, mols.positions[:18])
    assert s["split"] == {"train": {"molecules": 1, "conformers": K}, "val": {"molecules": 1, "conformers": K}}


def test_resume_after_interruption_is_bit_identical(smiles_file, tmp_path, monkeypatch):
    whole = tmp_path / "whole" / "mols.npz"
    _build(smiles_file, whole)

    out = tmp_path / "cut" / "mols.npz"
    interrupt_at(monkeypatch, B, 1, lambda: _build(smiles_file, out))
    parts = out.with_name(out.name + ".parts")
    assert not out.exists() and sorted(p.name for p in parts.glob("chunk_*")) == ["chunk_00000.npz"]
    (parts / "chunk_00001.npz.abc.tmp").write_bytes(b"half a shard")  # a worker killed while writing

    calls = count_chunks(monkeypatch, B)
    s = _build(smiles_file, out, overwrite=True)  # overwrite too resumes an unfinished build of the same settings
    assert calls == [1, 2] and s["chunks_resumed"] == 1  # chunk 0 was not built again
    assert _files(out) == _files(whole)
    assert s["molecules"] == json.loads(B.report_path(whole).read_text())["molecules"]

    # finished: the same command again does nothing; other settings over a half-built folder refuse
    calls.clear()
    assert _build(smiles_file, out)["chunks_resumed"] == 1 and calls == []
    parts.mkdir()
    (parts / "build.json").write_text(json.dumps({"other": "settings"}))
    with pytest.raises(ValueError, match="other settings"):
        _build(smiles_file, out, seed=3)
    assert _build(smiles_file, out, seed=3, overwrite=True)["chunks_resumed"] == 0  # discarded, built anew
    assert _build(smiles_file, out, overwrite=True)["chunks_resumed"] == 0 and _files(out) == _files(whole)


def test_conformers_fixed_by_the_seed_not_by_chunks_or_workers(smiles_file, tmp_path):
    a, b, c = (tmp_path / d / "mols.npz" for d in "abc")
    _build(smiles_file, a, chunk=2)
    _build(smiles_file, b, chunk=4, workers=2)  # other chunks, two spawned processes
    _build(smiles_file, c, seed=1)
    assert _files(a) == _files(b)
    assert not np.array_equal(load_geom(a).positions, load_geom(c).positions)
    assert C.molecule_seed(0, 5) == C.molecule_seed(0, 5) != C.molecule_seed(1, 5)


def test_bad_values_and_script(smiles_file, tmp_path, capsys):
    with pytest.raises(ValueError, match="conformers"):
        C.ConformerSettings(conformers=0).check()
    with pytest.raises(FileNotFoundError):
        _build(tmp_path / "missing.smi", tmp_path / "x.npz")
    csv = tmp_path / "mols.csv"
    csv.write_text("name,SMILES\na,CCO\nb,\n")
    assert B.read_smiles(csv) == ["CCO", ""]

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_conformers
    finally:
        sys.path.pop(0)
    out = tmp_path / "cli" / "mols.npz"
    build_conformers.main([str(smiles_file), "--out", str(out), "-k", "1", "--workers", "1"])
    text = capsys.readouterr().out
    assert "2 of 6 molecules built, 2 conformers" in text and "unsupported_charge" in text
    with pytest.raises(SystemExit) as e:
        build_conformers.main([str(tmp_path / "missing.smi"), "--out", str(out)])
    assert e.value.code == 2


def test_xtb_polish(tmp_path, monkeypatch):
    path = tmp_path / "x.smi"
    path.write_text("C[NH3+]\n")
    settings = C.ConformerSettings(conformers=1, xtb=True)
    monkeypatch.setitem(sys.modules, "tblite.interface", None)  # as if tblite were not installed
    with pytest.raises(ImportError, match="pip install tblite"):
        B.build_conformer_dataset(path, tmp_path / "x.npz", settings, workers=1, val_fraction=0)
    monkeypatch.undo()
    pytest.importorskip("tblite.interface")
    s = B.build_conformer_dataset(path, tmp_path / "x.npz", settings, workers=1, val_fraction=0)
    assert s["conformers"]["rejected"] == {} and s["conformers_written"] == 1
    mols = load_geom(tmp_path / "x.npz")
    # GFN2-xTB total energy of CH3NH3+ (Hartree; MMFF's would be near 0), with the charge of +1:
    # a neutral run would have one more electron and a doublet
    assert -9.0 < mols.properties["energy"][0] < -7.0 and mols.properties["charge"][0] == 1
