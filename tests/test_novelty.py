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
