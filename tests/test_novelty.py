import numpy as np

from conftest import embedded
from moldiff.data import MoleculeSet, QM9_VOCAB
from moldiff.metrics.evaluate import evaluate
from moldiff.metrics.novelty import training_smiles


def test_novelty_against_a_reference_split():
    from moldiff.data.qm9 import load_qm9

    ref = training_smiles("edm", split="valid")  # the valid split stands in for train: same code, 6x smaller
    assert 15_000 < len(ref) <= 17_748
    assert training_smiles("edm", split="valid") == ref  # second call reads the cache
    seen = load_qm9("valid").subset(np.arange(100))
    novel = MoleculeSet.from_list([embedded("CCCCCCCCCCCC")])  # 12 heavy atoms: not in QM9
    r = evaluate(MoleculeSet.concatenate([seen, novel]), QM9_VOCAB, train_smiles={"edm": ref}, protocols=("edm",))
    n_unique = round(r["edm"]["valid_and_unique"] * 101)
    assert round(r["edm"]["novelty"] * n_unique) == 1  # only the dodecane is new


def test_first_use_caches_say_what_they_are_building(tmp_path, monkeypatch, capsys):
    """Issue 32: the first evaluation spent ~110 s building QM9 caches without a word."""
    from moldiff.metrics import novelty, reference

    small = MoleculeSet.from_list([embedded("CCO"), embedded("CC=O")])
    monkeypatch.setenv("MOLDIFF_DATA_DIR", str(tmp_path))
    (tmp_path / "qm9" / "cache").mkdir(parents=True)
    monkeypatch.setattr(novelty, "load_qm9", lambda split, remove_h=False: small)
    monkeypatch.setattr(reference, "load_source", lambda spec: (small, None, None))
    assert training_smiles("edm") == {"[H]OC([H])([H])C([H])([H])[H]", "[H]C(=O)C([H])([H])[H]"}
    reference.reference_stats("qm9:train", 10)
    err = capsys.readouterr().err.splitlines()
    assert err == [f"computing the QM9 train SMILES under the edm protocol for novelty (once, cached in {tmp_path}/qm9/cache; "
                   "a minute or two on 2 CPU cores)",
                   f"computing qm9:train's reference geometry statistics (once, cached in {tmp_path}/qm9/cache; ~10 s)"]
    training_smiles("edm")  # cached now: silent
    assert capsys.readouterr().err == ""
