"""The MOSES set (moldiff.data.moses, build_conformers' moses source): the wheel is read only with
the pinned checksum, MOSES's split is kept, the stored bonds and charges are the SMILES' own, failures
are counted by reason, a resumed build gives the same bytes, and the bond model's dataset reads it.
The real wheel is fetched only in a slow test; the others use a tiny zip laid out like it."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from moldiff.chem import conformers as C
from moldiff.data import moses as M
from moldiff.data.geom import load_geom_formal_charges, load_geom_smiles
from moldiff.data.molecules import MoleculeSet
from moldiff.jobs import build_conformers as B
from chunked_build import count_chunks, interrupt_at

ROOT = Path(__file__).resolve().parents[1]
SPLITS = {
    # built: phenol (aromatic), acetonitrile (triple), nitromethane (N+ / O-), acetate (O-);
    # left out: unparsable, an empty row, a salt, selenium
    "train": ["c1ccccc1O", "CC#N", "not_a_smiles(", "C[N+](=O)[O-]", "", "CCO.Cl", "C[Se]C", "CC(=O)[O-]"],
    "test": ["c1ccncc1", "CC(=O)O"],
    "test_scaffolds": ["c1ccsc1", "FC(F)F", "C1CC1"],
}
BUILT = {"train": ["c1ccccc1O", "CC#N", "C[N+](=O)[O-]", "CC(=O)[O-]"], "test": SPLITS["test"],
         "test_scaffolds": SPLITS["test_scaffolds"]}


@pytest.fixture
def wheel(tmp_path, monkeypatch):
    path = M.synthetic_wheel(tmp_path / "wheel" / M.WHEEL, SPLITS)
    monkeypatch.setattr(M, "SHA256", M.sha256_of(path))  # this zip stands in for the pinned wheel
    return path


def _build(wheel, out, **kw):
    settings = C.ConformerSettings(conformers=1, seed=kw.pop("seed", 0))
    return B.build_moses_dataset(None, out, settings, **{"workers": 1, "chunk": 3, "wheel": wheel, **kw})


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.endswith((".npz", ".smiles.txt"))}


def test_a_wheel_with_another_checksum_is_refused_and_never_kept(tmp_path):
    fake = M.synthetic_wheel(tmp_path / M.WHEEL, SPLITS)
    with pytest.raises(ValueError, match="sha256 .* is not the pinned"):
        M.check_wheel(fake)
    with pytest.raises(ValueError, match="pinned"):
        B.build_moses_dataset(3, tmp_path / "out" / "m.npz", wheel=fake)

    def download(dest):  # as if the index served this file
        (dest / M.WHEEL).write_bytes(fake.read_bytes())

    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="pinned"):
        M.fetch_wheel(cache, download=download)
    assert list(cache.iterdir()) == []  # neither the file nor the download folder stays

    good = M.fetch_wheel(cache, sha256=M.sha256_of(fake), download=download)
    assert good == cache / M.WHEEL and list(cache.iterdir()) == [good]
    assert M.fetch_wheel(cache, sha256=M.sha256_of(fake), download=lambda d: pytest.fail("fetched twice")) == good
    good.write_bytes(b"altered")  # a wheel already there is checked each time
    with pytest.raises(ValueError, match="pinned"):
        M.fetch_wheel(cache, sha256=M.sha256_of(fake), download=download)


def test_selection_keeps_the_split_is_seeded_and_nested(tmp_path):
    wheel = M.synthetic_wheel(tmp_path / M.WHEEL, {"train": [f"C{'C' * i}O" for i in range(40)],
                                                   "test": [f"N{'C' * i}" for i in range(10)],
                                                   "test_scaffolds": [f"F{'C' * i}" for i in range(5)]})
    assert M.split_sizes(wheel) == {"train": 40, "test": 10, "test_scaffolds": 5}
    smiles, rows, labels, sel = M.select_rows(wheel, 8, seed=0)
    assert sel["counts"] == {"train": 8, "test": 2, "test_scaffolds": 1}  # MOSES's proportions
    by = {s: [smi for smi, lab in zip(smiles, labels) if lab == s] for s in M.SPLITS}
    assert all(x.startswith("C") for x in by["train"]) and all(x.startswith("N") for x in by["test"])
    assert all(x.startswith("F") for x in by["test_scaffolds"])
    # global rows: train first, then test, then scaffold test; each split in file order
    assert all(r < 40 for r, lab in zip(rows, labels) if lab == "train")
    assert all(40 <= r < 50 for r, lab in zip(rows, labels) if lab == "test")
    assert rows == sorted(rows) and len(set(rows)) == len(rows)
    assert {smiles[k] for k in range(len(rows))} <= set(M.iter_split(wheel, "train")) | set(M.iter_split(wheel, "test")) \
        | set(M.iter_split(wheel, "test_scaffolds"))
    smaller = M.select_rows(wheel, 4, seed=0)
    assert set(smaller[1]) <= set(rows)  # a smaller n picks a subset of a larger one's molecules
    assert M.select_rows(wheel, 8, seed=1)[1] != rows
    assert len(M.select_rows(wheel, None)[0]) == 55


def test_tiny_build_keeps_the_split_counts_failures_and_stores_the_smiles_graph(wheel, tmp_path):
    from rdkit import Chem

    out = tmp_path / "out" / "m.npz"
    s = _build(wheel, out)
    assert s["smiles"] == 13 and s["molecules_built"] == 9
    assert s["molecules"]["rejected"] == {C.UNPARSABLE: 2, C.FRAGMENTS: 1, C.UNKNOWN_ELEMENT: 1}
    assert s["split"] == {k: {"molecules": len(v), "conformers": len(v)} for k, v in BUILT.items()}
    assert json.loads(B.report_path(out).read_text()) == s
    assert s["identity"]["source"]["sha256"] == M.SHA256 and s["identity"]["bonds"]

    for split, path in B.moses_paths(out).items():
        assert load_geom_smiles(path) == BUILT[split]  # MOSES's split, in row order
        mols = MoleculeSet.load(path)
        assert mols.has_bonds and mols.charges is not None
        np.testing.assert_array_equal(load_geom_formal_charges(path), mols.charges)  # GEOM's accessor reads them too
        for k, smi in enumerate(BUILT[split]):
            numbers, _ = mols[k]
            ref = Chem.AddHs(Chem.MolFromSmiles(smi))
            assert numbers.tolist() == [a.GetAtomicNum() for a in ref.GetAtoms()]
            assert mols.charges_of(k).tolist() == [a.GetFormalCharge() for a in ref.GetAtoms()]
            assert mols.properties["charge"][k] == Chem.GetFormalCharge(ref)
            bonds = mols.bonds_of(k)
            assert set(bonds[:, 2].tolist()) <= {1, 2, 3}  # Kekulé, as QM9's labels: never aromatic
            # the stored graph is the molecule: rebuilt and sanitised it gives the SMILES back
            rw = Chem.RWMol()
            for z, q in zip(numbers.tolist(), mols.charges_of(k).tolist()):
                atom = Chem.Atom(int(z))
                atom.SetFormalCharge(int(q))
                atom.SetNoImplicit(True)
                rw.AddAtom(atom)
            for i, j, order in bonds.tolist():
                rw.AddBond(i, j, {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}[order])
            Chem.SanitizeMol(rw)
            assert Chem.MolToSmiles(Chem.RemoveHs(rw)) == Chem.MolToSmiles(Chem.MolFromSmiles(smi))
    train = MoleculeSet.load(B.moses_paths(out)["train"])
    phenol, nitro = train.bonds_of(0), train.bonds_of(2)
    assert sorted(phenol[:, 2].tolist()).count(2) == 3  # three double bonds in the ring
    assert sorted(nitro[:, 2].tolist()) == [1] * 5 + [2] and sorted(train.charges_of(2).tolist())[::6] == [-1, 1]


def test_the_bond_models_dataset_reads_the_cache(wheel, tmp_path):
    from moldiff.chem.bond_labels import labelled_split
    from moldiff.jobs.train import load_state_split

    out = tmp_path / "m.npz"
    _build(wheel, out)
    spec = f"geom:{B.moses_paths(out)['train']}"
    mols, info = labelled_split(spec)
    assert info["source"] == "file" and len(mols) == 4  # the stored labels, nothing perceived
    ds = load_state_split(spec, {"vocabulary": "geom", "charges": [-1, 0, 1]})
    state = ds[np.arange(4)]
    assert int((state.bond > 0).sum()) == len(mols.bonds)
    assert int((state.bond == 3).sum()) == 1  # acetonitrile's triple bond
    m = ds.marginals()
    assert m["charge"][0] > 0 and m["charge"][2] > 0 and m["bond"][4] == 0.0


def test_resume_after_an_interruption_gives_the_same_bytes(wheel, tmp_path, monkeypatch):
    whole = tmp_path / "whole" / "m.npz"
    _build(wheel, whole)
    out = tmp_path / "cut" / "m.npz"
    real = B.build_chunk  # put back below, for the spawned-process rebuild
    interrupt_at(monkeypatch, B, 2, lambda: _build(wheel, out))
    parts = out.with_name(out.name + ".parts")
    assert sorted(p.name for p in parts.glob("chunk_*")) == ["chunk_00000.npz", "chunk_00001.npz"]
    assert _files(out.parent) == {}  # no cache, not even a partial one
    (parts / ".chunk_00002.npz.x.tmp").write_bytes(b"half a shard")

    calls = count_chunks(monkeypatch, B)
    s = _build(wheel, out)
    assert calls == [2, 3, 4] and s["chunks_resumed"] == 2
    assert _files(out.parent) == _files(whole.parent)
    assert not parts.exists()
    calls.clear()
    assert _build(wheel, out)["chunks_resumed"] == 2 and calls == []  # up to date: nothing rebuilt
    monkeypatch.setattr(B, "build_chunk", real)  # other chunks in two spawned processes: the same bytes
    assert _build(wheel, out, workers=2, chunk=5, overwrite=True) and _files(out.parent) == _files(whole.parent)


def test_script(wheel, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_conformers
    finally:
        sys.path.pop(0)
    out = tmp_path / "cli" / "m.npz"
    build_conformers.main(["moses", "--wheel", str(wheel), "--out", str(out), "--workers", "1"])
    text = capsys.readouterr().out
    assert "9 of 13 molecules built, 9 conformers" in text and "caches: train 4 molecules" in text
    assert B.moses_output(100000, C.ConformerSettings(conformers=1)).name == "moses_100k_k1.npz"
    smi = tmp_path / "two.smi"  # --bonds: a SMILES-file build stores the graphs too
    smi.write_text("CC#N\nc1ccccc1\n")
    build_conformers.main([str(smi), "--bonds", "-k", "2", "--val-fraction", "0", "--workers", "1", "--out", str(tmp_path / "f.npz")])
    two = MoleculeSet.load(tmp_path / "f.npz")
    assert len(two) == 4 and two.has_bonds and [len(two.bonds_of(k)) for k in range(4)] == [5, 5, 12, 12]
    for bad in (["moses", "-n", "0"], ["moses", "--wheel", str(tmp_path / "none.whl")], [str(wheel), "-n", "5"]):
        with pytest.raises(SystemExit) as e:
            build_conformers.main([*bad, "--out", str(out)])
        assert e.value.code == 2
    assert "error: " in capsys.readouterr().err


@pytest.mark.slow
def test_the_real_wheel_downloads_checks_and_reads(tmp_path):
    """Fetches the 52 MB molsets wheel through pip (network or the configured index)."""
    path = M.fetch_wheel(tmp_path)
    assert M.sha256_of(path) == M.SHA256
    assert M.split_sizes(path) == {"train": 1584663, "test": 176074, "test_scaffolds": 176225}
    smiles, _, labels, sel = M.select_rows(path, 90, seed=0)
    assert sel["counts"] == {"train": 90, "test": 10, "test_scaffolds": 10} and labels.count("test") == 10


def test_moses_bonds_experiment_trains_on_the_cache_in_edge_bounded_batches(wheel, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from moldiff.jobs import train as T

    out = tmp_path / "data" / "moses" / "cache" / "m.npz"
    _build(wheel, out)
    paths = B.moses_paths(out)
    monkeypatch.setenv("MOLDIFF_DATA_DIR", str(tmp_path / "nowhere"))
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", ["experiment=moses_bonds_cpu"])
        with pytest.raises(FileNotFoundError, match="build it first: python scripts/build_conformers.py moses -n 100000"):
            T.check_dataset_files(cfg)
        cfg = compose("train", ["experiment=moses_bonds_cpu", f"dataset.train=geom:{paths['train']}",
                                f"dataset.val=geom:{paths['test']}", "model.hidden=16", "model.layers=1", "batch_edges=400",
                                "trainer.max_steps=2", "trainer.enable_progress_bar=false", "logs=[]", "evaluate.every_n_epochs=0",
                                f"checkpoint.dir={tmp_path / 'ckpt'}"])
    T.run_training(cfg, tmp_path / "run")
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
