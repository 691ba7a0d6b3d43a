"""Metrics of the written graph (issue 29): molecules judged by their own bonds and formal
charges, on real molecules (every one valid and stable) and on broken graphs (caught)."""

import gzip
import shutil
from pathlib import Path

import numpy as np

from moldiff.chem.bond_labels import label_bonds
from moldiff.data.molecules import MoleculeSet
from moldiff.data.qm9 import load_qm9
from moldiff.data.user import read_molecules
from moldiff.metrics.evaluate import evaluate
from moldiff.data.elements import GEOM_VOCAB
from moldiff.metrics.graph import graph_metrics

DATA = Path(__file__).parent / "data"


def test_real_geom_conformers_are_valid_and_stable_as_written(tmp_path):
    sdf = tmp_path / "geom.sdf"
    with gzip.open(DATA / "geom_drugs_503_conformers.sdf.gz", "rb") as src, open(sdf, "wb") as dst:
        shutil.copyfileobj(src, dst)
    mols, _ = read_molecules(sdf)
    assert mols.has_bonds and mols.charges is not None and int((mols.charges != 0).sum()) > 0
    result = evaluate(mols, GEOM_VOCAB, protocols=("edm",))["written_graph"]
    assert result["n"] == 503 and result["valid"] == 1.0 and result["molecule_stable"] == 1.0 and result["atom_stable"] == 1.0
    # as measured on these records: one is two pieces as written, and for one the coordinates alone
    # give another graph
    assert round(result["valid_connected"] * 503) == 502 and round(result["geometry_agrees"] * 503) == 502


def test_qm9_bond_labels_are_valid_stable_and_agree_with_the_geometry():
    mols = load_qm9("valid").subset(np.arange(200))
    labelled, keep, failures = label_bonds(mols)
    assert len(labelled) + sum(failures.values()) == 200
    g = graph_metrics(labelled, geometry=True)
    assert g["valid"] == g["molecule_stable"] == g["geometry_agrees"] == 1.0
    assert set(np.unique(labelled.bonds[:, 2]).tolist()) <= {1, 2, 3}  # Kekulé labels, never aromatic


def test_broken_graphs_are_caught():
    # methane with a fifth bond to a second H-less carbon: C valence 5 -> invalid, unstable
    z = [6, 1, 1, 1, 1, 6]
    x = np.random.default_rng(0).normal(size=(6, 3))
    mols = MoleculeSet.from_list([(z, x), (z, x)])
    bonds = [(0, 1, 1), (0, 2, 1), (0, 3, 1), (0, 4, 1), (0, 5, 1), (0, 1, 1), (0, 2, 1), (0, 3, 1), (0, 4, 1)]
    mols = MoleculeSet(mols.numbers, mols.positions, mols.offsets, charges=np.zeros(12), bonds=bonds, bond_offsets=[0, 5, 9])
    g = graph_metrics(mols, n_total=4)  # two more records that could not be read count as failures
    assert g["valid"] == 0.25  # the second (methane + a lone C atom) sanitises; the first does not
    assert g["valid_connected"] == 0.0  # the lone carbon is a second piece
    # unstable: the 5-valent C and its singly bonded C neighbour; the bare C of the second
    assert g["molecule_stable"] == 0.0 and g["atom_stable"] == 9 / 12
