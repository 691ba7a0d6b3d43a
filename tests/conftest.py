import numpy as np
import pytest

from moldiff.jobs.resolvers import register_resolvers

register_resolvers()  # the configs' Hydra sections use them, as the scripts do


@pytest.fixture
def plain_linear(monkeypatch):
    """Inference products through ``F.linear`` instead of oneDNN: the golden tests pin the maths of
    commits whose sampling used it, bit for bit; oneDNN sums in another order (a 1e-7 relative
    difference that a 4-step sampler amplifies). ``test_egnn.py`` checks the two paths agree."""
    from moldiff.nn import egnn_kernels

    monkeypatch.setattr(egnn_kernels, "ONEDNN", False)


@pytest.fixture(scope="session")
def qm9_test():
    from moldiff.data.qm9 import load_qm9

    return load_qm9("test")


def embedded(smiles: str, seed: int = 0):
    """(atomic numbers, positions) of an RDKit ETKDG+MMFF conformer with explicit hydrogens."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    AllChem.MMFFOptimizeMolecule(mol)
    return np.array([a.GetAtomicNum() for a in mol.GetAtoms()]), mol.GetConformer().GetPositions()


@pytest.fixture(scope="session")
def tiny_diffusion(tmp_path_factory):
    """A tiny QM9 diffusion checkpoint (experiment=tiny, 3 steps): what the job tests sample from."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from moldiff.jobs.train import run_training

    tmp = tmp_path_factory.mktemp("tiny_diffusion")
    root = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(root, version_base="1.3"):
        run_training(compose("train", ["experiment=tiny", "trainer.max_steps=3", "trainer.enable_progress_bar=false", "logs=[]",
                                       f"checkpoint.dir={tmp}"]), tmp)
    return tmp / "last.ckpt"
