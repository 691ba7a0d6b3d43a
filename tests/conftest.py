import numpy as np
import pytest


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
