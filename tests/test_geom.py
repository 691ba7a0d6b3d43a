"""GEOM-Drugs readers, parsers, the streamed .npz writer and the cache-building script, on small
files written in both published formats from RDKit conformers."""

from __future__ import annotations

import json
import pickle
import runpy
from pathlib import Path

import msgpack
import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem
from rdkit.Geometry import Point3D

from moldiff.data import report as R
from moldiff.data.geom import (
    build_geom_cache,
    load_geom,
    load_geom_formal_charges,
    load_geom_smiles,
    read_geom_msgpack,
    read_geom_rdkit_folder,
    smiles_charge,
)
from moldiff.data.geom_parsers import iter_json_object
from moldiff.data.npz_writer import NpzStreamWriter

K = 4
DRUGS = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "caffeine": "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
    "ibuprofen": "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
    "paracetamol": "CC(=O)Nc1ccc(O)cc1",
    "nicotine": "CN1CCC[C@H]1c1cccnc1",
    "benzocaine": "CCOC(=O)c1ccc(N)cc1",
    "lidocaine": "CCN(CC)CC(=O)Nc1c(C)cccc1C",
    "phenacetin": "CCOc1ccc(NC(C)=O)cc1",
    "procaine": "CCN(CC)CCOC(=O)c1ccc(N)cc1",
    "metformin": "CN(C)C(=N)NC(=N)N",
    "chlorzoxazone": "O=c1[nH]c2cc(Cl)ccc2o1",
    "sulfamethoxazole": "Cc1cc(NS(=O)(=O)c2ccc(N)cc2)no1",
    "ebselen": "O=C1N(c2ccccc2)[Se]c2ccccc12",  # Se: outside EDM's GEOM vocabulary
}
NAN_MOLECULE = "ibuprofen"  # its lowest-energy conformer gets a NaN coordinate


def _energy(mol, cid):
    props = AllChem.MMFFGetMoleculeProperties(mol)
    ff = AllChem.MMFFGetMoleculeForceField(mol, props, confId=cid) if props is not None else None
    ff = ff or AllChem.UFFGetMoleculeForceField(mol, confId=cid)  # MMFF has no Se parameters
    return ff.CalcEnergy()


def _make_molecules():
    """Per molecule: SMILES, its RDKit Mol and conformer records in (shuffled) source order."""
    rng = np.random.default_rng(0)
    out = []
    for i, (name, smi) in enumerate(DRUGS.items()):
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        cids = list(AllChem.EmbedMultipleConfs(mol, numConfs=2 + i % 5, randomSeed=42 + i))
        assert cids, name
        energies = {cid: _energy(mol, cid) for cid in cids}
        if name == NAN_MOLECULE:
            lowest = min(cids, key=energies.get)
            mol.GetConformer(lowest).SetAtomPosition(0, Point3D(float("nan"), 0.0, 0.0))
        e = np.array([energies[c] for c in cids])
        w = np.exp(-(e - e.min()) / 5.0)
        w /= w.sum()
        confs = []
        for j in rng.permutation(len(cids)):  # source order is not energy order
            cid = cids[j]
            confs.append(
                {
                    "cid": cid,
                    "geom_id": 1000 * i + cid,
                    "energy": float(e[j]),
                    "weight": float(w[j]),
                    "numbers": np.array([a.GetAtomicNum() for a in mol.GetAtoms()]),
                    "positions": mol.GetConformer(cid).GetPositions(),
                }
            )
        out.append({"name": name, "smiles": Chem.MolToSmiles(Chem.MolFromSmiles(smi)), "mol": mol, "confs": confs})
    return out


def _single_conformer(mol, cid):
    m = Chem.Mol(mol)
    m.RemoveAllConformers()
    m.AddConformer(Chem.Conformer(mol.GetConformer(cid)), assignId=True)
    return m


def _write_rdkit_folder(root, molecules):
    """rdkit_folder with every molecule, plus a corrupt pickle and a missing one in the middle."""
    folder = root / "rdkit_folder"
    (folder / "drugs").mkdir(parents=True)
    summary = {}
    for i, m in enumerate(molecules):
        if i == 5:
            summary["CCO"] = {"pickle_path": "drugs/CCO.pickle", "uniqueconfs": 3, "charge": 0}
            (folder / "drugs" / "CCO.pickle").write_bytes(b"\x80\x04not a pickle at all")
            summary["CCN"] = {"pickle_path": "drugs/CCN.pickle", "uniqueconfs": 2, "charge": 0}
        rel = f"drugs/{m['smiles'].replace('/', '_')}.pickle"
        n = len(m["confs"])
        record = {
            "smiles": m["smiles"],
            "charge": 0,
            "uniqueconfs": n,
            "conformers": [
                {
                    "rd_mol": _single_conformer(m["mol"], c["cid"]),
                    "totalenergy": c["energy"],
                    "boltzmannweight": c["weight"],
                    "relativeenergy": c["energy"] - min(x["energy"] for x in m["confs"]),
                    "geom_id": c["geom_id"],
                }
                for c in m["confs"]
            ],
        }
        with open(folder / rel, "wb") as f:
            pickle.dump(record, f)
        summary[m["smiles"]] = {"pickle_path": rel, "uniqueconfs": n, "totalconfs": n, "charge": 0}
    (folder / "summary_drugs.json").write_text(json.dumps(summary, indent=1))
    return folder


def _msgpack_molecule(m, key=str):
    conf_key = key
    return {
        conf_key("conformers"): [
            {
                conf_key("xyz"): np.column_stack([c["numbers"], c["positions"]]).tolist(),
                conf_key("totalenergy"): c["energy"],
                conf_key("boltzmannweight"): c["weight"],
                conf_key("geom_id"): c["geom_id"],
            }
            for c in m["confs"]
        ],
        conf_key("charge"): 0,
        conf_key("uniqueconfs"): len(m["confs"]),
    }


def _write_msgpack(path, molecules, per_chunk=4):
    """A stream of maps of ``per_chunk`` molecules; the second map uses bytes keys throughout."""
    with open(path, "wb") as f:
        for c, start in enumerate(range(0, len(molecules), per_chunk)):
            if c == 1:
                enc = lambda s: s.encode()  # noqa: E731
                chunk = {m["smiles"].encode(): _msgpack_molecule(m, enc) for m in molecules[start : start + per_chunk]}
            else:
                chunk = {m["smiles"]: _msgpack_molecule(m) for m in molecules[start : start + per_chunk]}
            f.write(msgpack.packb(chunk, use_bin_type=True))
    return path


def _expected(m, k):
    """The k lowest-energy usable conformers of a molecule, ascending."""
    if m["name"] == "ebselen":
        return []
    ok = [c for c in m["confs"] if np.isfinite(c["positions"]).all()]
    return sorted(ok, key=lambda c: c["energy"])[:k]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("geom")
    molecules = _make_molecules()
    return {
        "molecules": molecules,
        "folder": _write_rdkit_folder(root, molecules),
        "msgpack": _write_msgpack(root / "drugs_crude.msgpack", molecules),
        "root": root,
    }


def _by_smiles(rows):
    out = {}
    for smi, z, x, e, w in rows:
        out.setdefault(smi, []).append((z, x, e, w))
    return out


@pytest.mark.parametrize("fmt", ["rdkit_folder", "msgpack"])
@pytest.mark.parametrize("k", [1, K, None])
def test_keeps_lowest_k_in_ascending_energy(data, fmt, k):
    rep = R.InputReport()
    if fmt == "rdkit_folder":
        rows = list(read_geom_rdkit_folder(data["folder"], k, report=rep))
    else:
        rows = list(read_geom_msgpack(data["msgpack"], k, report=rep))
    got = _by_smiles(rows)
    for m in data["molecules"]:
        want = _expected(m, k)
        have = got.get(m["smiles"], [])
        assert len(have) == len(want), m["name"]
        energies = [h[2] for h in have]
        assert energies == sorted(energies)
        for (z, x, e, w), c in zip(have, want):
            assert e == c["energy"] and w == c["weight"]
            assert x.dtype == np.float32 and x.shape == (len(z), 3)
            np.testing.assert_array_equal(z, c["numbers"])
            np.testing.assert_allclose(x, c["positions"], atol=1e-5, rtol=0)
    # Molecules with enough usable conformers hit exactly k; the rest keep all they have.
    if k == K:
        assert any(len(v) == k for v in got.values())
        assert any(len(v) < k for v in got.values())


def test_bad_input_counted_rest_read(data):
    n_se = len(next(m for m in data["molecules"] if m["name"] == "ebselen")["confs"])
    rep = R.InputReport()
    rows = list(read_geom_rdkit_folder(data["folder"], K, report=rep))
    assert rep.rejected == {R.UNREADABLE: 2, R.NONFINITE: 1, R.UNKNOWN_ELEMENT: n_se}
    assert any("CCO" in s and "pickle" in s for s in rep.examples)
    assert any("CCN" in s and "missing" in s for s in rep.examples)
    assert len(_by_smiles(rows)) == len(DRUGS) - 1  # everything but ebselen

    rep = R.InputReport()
    rows = list(read_geom_msgpack(data["msgpack"], K, report=rep))
    assert rep.rejected == {R.NONFINITE: 1, R.UNKNOWN_ELEMENT: n_se}
    assert len(_by_smiles(rows)) == len(DRUGS) - 1
    # A record is a conformer examined: up to k usable ones (plus the NaN one), and every one of
    # ebselen's, since none is usable.
    usable = [m for m in data["molecules"] if m["name"] != "ebselen"]
    examined = [min(len(m["confs"]), K + (m["name"] == NAN_MOLECULE)) for m in usable]
    assert rep.n_records == sum(examined) + n_se


def test_msgpack_structural_faults(data, tmp_path):
    mols = [m for m in data["molecules"] if m["name"] in ("aspirin", "caffeine", "nicotine")]
    path = tmp_path / "bad.msgpack"
    good = msgpack.packb({m["smiles"]: _msgpack_molecule(m) for m in mols}, use_bin_type=True)
    empty_conf = {"conformers": [{"xyz": [], "totalenergy": -1.0}, {"xyz": [[6, 0.0, 0.0]], "totalenergy": -2.0}]}
    odd = msgpack.packb({"C": empty_conf, "N": {"conformers": []}, "O": [1, 2]}, use_bin_type=True)
    lido = next(m for m in data["molecules"] if m["name"] == "lidocaine")
    last = msgpack.packb({lido["smiles"]: _msgpack_molecule(lido)})
    path.write_bytes(good + odd + last[:-7])  # the last map is cut short
    rep = R.InputReport()
    rows = list(read_geom_msgpack(path, K, report=rep))
    assert {r[0] for r in rows} == {m["smiles"] for m in mols}
    # Bad-shape xyz, non-map molecule, truncated tail: unreadable; no atoms or no conformers: empty.
    assert rep.rejected == {R.EMPTY: 2, R.UNREADABLE: 3}


def test_formats_give_identical_sets(data, tmp_path):
    p1, r1 = build_geom_cache(data["folder"], tmp_path / "a.npz", conformers_per_molecule=K)
    p2, r2 = build_geom_cache(data["msgpack"], tmp_path / "b.npz", conformers_per_molecule=K)
    a, b = load_geom(p1), load_geom(p2)
    _assert_same(a, b)
    assert load_geom_smiles(p1) == load_geom_smiles(p2)
    assert r1.rejected[R.UNREADABLE] == 2 and R.UNREADABLE not in r2.rejected

    smiles = load_geom_smiles(p1)
    by_smiles = {m["smiles"]: m for m in data["molecules"]}
    assert len(smiles) == len(DRUGS) - 1 and set(smiles) <= set(by_smiles)
    assert a.numbers.dtype == np.int16 and a.positions.dtype == np.float32
    assert set(a.properties) == {"mol_id", "energy", "boltzmann_weight", "conformer_rank", "charge"}
    assert (a.properties["charge"] == 0).all()  # every drug here is neutral
    assert np.all(np.diff(a.properties["mol_id"]) >= 0)
    for i in range(len(a)):
        mol_id, rank = a.properties["mol_id"][i], a.properties["conformer_rank"][i]
        c = _expected(by_smiles[smiles[mol_id]], K)[rank]
        z, x = a[i]
        assert a.properties["energy"][i] == c["energy"]
        np.testing.assert_array_equal(z, c["numbers"])
        np.testing.assert_allclose(x, c["positions"], atol=1e-5, rtol=0)
    assert len(a) == sum(len(_expected(m, K)) for m in data["molecules"])


def test_chunked_writing_matches(data, tmp_path):
    p1, _ = build_geom_cache(data["msgpack"], tmp_path / "big.npz", "msgpack", K, chunk=10000)
    p2, _ = build_geom_cache(data["msgpack"], tmp_path / "small.npz", "msgpack", K, chunk=2)
    _assert_same(load_geom(p1), load_geom(p2))
    assert load_geom_smiles(p1) == load_geom_smiles(p2)
    assert sorted(q.name for q in tmp_path.iterdir()) == [
        "big.npz", "big.npz.smiles.txt", "small.npz", "small.npz.smiles.txt"
    ]  # no temporary files left behind


def test_max_molecules_and_arguments(data, tmp_path):
    rows = list(read_geom_msgpack(data["msgpack"], K, max_molecules=3))
    assert len({r[0] for r in rows}) == 3
    rows = list(read_geom_rdkit_folder(data["folder"] / "summary_drugs.json", K, max_molecules=2))
    assert len({r[0] for r in rows}) == 2
    with pytest.raises(ValueError):
        read_geom_msgpack(data["msgpack"], 0)
    with pytest.raises(ValueError):
        build_geom_cache(data["msgpack"], tmp_path / "x.npz", fmt="sdf")
    p, rep = build_geom_cache(data["msgpack"], tmp_path / "none.npz", max_molecules=0)
    s = load_geom(p)
    assert len(s) == 0 and len(s.numbers) == 0 and load_geom_smiles(p) == []


IONS = {"methylammonium": ("C[NH3+]", 1), "acetate": ("CC(=O)[O-]", -1), "glycine zwitterion": ("[NH3+]CC(=O)[O-]", 0)}


def test_cache_carries_each_molecule_total_charge(tmp_path):
    molecules = []
    for i, (name, (smi, _)) in enumerate(IONS.items()):
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        cids = list(AllChem.EmbedMultipleConfs(mol, numConfs=2, randomSeed=7 + i))
        confs = [{"cid": c, "geom_id": 10 * i + c, "energy": _energy(mol, c), "weight": 0.5,
                  "numbers": np.array([a.GetAtomicNum() for a in mol.GetAtoms()]), "positions": mol.GetConformer(c).GetPositions()}
                 for c in cids]
        molecules.append({"name": name, "smiles": Chem.MolToSmiles(Chem.MolFromSmiles(smi)), "mol": mol, "confs": confs})
    want = {m["smiles"]: IONS[m["name"]][1] for m in molecules}
    sources = {"rdkit_folder": _write_rdkit_folder(tmp_path, molecules), "msgpack": _write_msgpack(tmp_path / "ions.msgpack", molecules)}
    for fmt, source in sources.items():
        path, _ = build_geom_cache(source, tmp_path / f"{fmt}.npz", conformers_per_molecule=K)
        s, smiles = load_geom(path), load_geom_smiles(path)
        assert len(s) == 6
        assert s.properties["charge"].tolist() == [want[smiles[i]] for i in s.properties["mol_id"]], fmt
        formal = load_geom_formal_charges(path)
        if fmt == "msgpack":
            assert formal is None  # xyz rows cannot be matched to the SMILES' atoms
        else:  # the rd_mol's own formal charges, atom by atom, summing to the total
            assert len(formal) == len(s.numbers)
            sums = np.add.reduceat(formal.astype(np.int64), s.offsets[:-1])
            assert sums.tolist() == s.properties["charge"].tolist()
            assert sorted(set(formal.tolist())) == [-1, 0, 1]
    # a cache written before the charge fields still loads, without them
    with np.load(path) as f:
        np.savez(tmp_path / "old.npz", **{k: f[k] for k in f.files if k not in ("prop.charge", "formal_charges")})
    old = load_geom(tmp_path / "old.npz")
    assert "charge" not in old.properties and len(old) == 6 and load_geom_formal_charges(tmp_path / "old.npz") is None
    assert smiles_charge("[NH4+].[Cl-]") == 0 and smiles_charge("[O-][n+]1ccccc1") == 0 and smiles_charge("C[N+](C)(C)C") == 1
    assert np.isnan(smiles_charge("C1CC("))  # unparsable: not given, searched by the corrected protocol


def _assert_same(a, b):
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert a.properties.keys() == b.properties.keys()
    for k in a.properties:
        assert a.properties[k].dtype == b.properties[k].dtype
        np.testing.assert_array_equal(a.properties[k], b.properties[k])


def test_json_object_read_in_small_blocks(data, tmp_path):
    summary = data["folder"] / "summary_drugs.json"
    assert list(iter_json_object(summary, block=7)) == list(json.loads(summary.read_text()).items())
    # values cut at a block boundary (a number there may look complete) and an empty object
    path = tmp_path / "cut.json"
    path.write_text('{"a": 12345678, "b" :[1.5e10, "x,}"], "c": {}}')
    assert dict(iter_json_object(path, block=3)) == {"a": 12345678, "b": [1.5e10, "x,}"], "c": {}}
    path.write_text(" { } ")
    assert list(iter_json_object(path, block=2)) == []
    for bad in ('[1, 2]', '{"a": 1', '{"a" 1}'):
        path.write_text(bad)
        with pytest.raises(ValueError):
            list(iter_json_object(path, block=4))


def test_npz_writer_streams_and_cleans_up(tmp_path):
    out = tmp_path / "x.npz"
    w = NpzStreamWriter(out, {"pos": np.float32, "ids": np.int64, "none": np.int16}, {"pos": 3})
    for start in (0, 2, 5):
        w.append("pos", np.arange(3 * start, 3 * start + 6).reshape(2, 3))
        w.append("ids", [start, start + 1])
    w.finish()
    with np.load(out) as z:
        assert list(z.keys()) == ["pos", "ids", "none"]
        assert z["pos"].dtype == np.float32 and z["pos"].shape == (6, 3) and z["none"].shape == (0,)
        np.testing.assert_array_equal(z["ids"], [0, 1, 2, 3, 5, 6])
        assert z["pos"][4, 0] == 15
    w = NpzStreamWriter(tmp_path / "y.npz", {"a": np.float64}, {})
    w.append("a", np.ones(4))
    w.close()  # abandoned build: nothing written, nothing left over
    assert [q.name for q in tmp_path.iterdir()] == ["x.npz"]


def test_build_script(data, tmp_path, capsys):
    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "build_geom_cache.py"))["main"]
    main([str(data["msgpack"]), str(tmp_path / "cli.npz"), "-k", "2", "--max-molecules", "5"])
    assert "cli.npz" in capsys.readouterr().out
    ref, _ = build_geom_cache(data["msgpack"], tmp_path / "ref.npz", conformers_per_molecule=2, max_molecules=5)
    _assert_same(load_geom(tmp_path / "cli.npz"), load_geom(ref))
    assert load_geom_smiles(tmp_path / "cli.npz") == load_geom_smiles(ref)
