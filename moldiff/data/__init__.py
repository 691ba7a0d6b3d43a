"""Datasets as flat arrays plus offsets: QM9 (offline, qm9pack), GEOM-Drugs, users' SDF/XYZ."""

from moldiff.data.molecules import MoleculeSet
from moldiff.data.report import InputReport
from moldiff.data.elements import Vocabulary, QM9_VOCAB, GEOM_VOCAB

__all__ = ["MoleculeSet", "InputReport", "Vocabulary", "QM9_VOCAB", "GEOM_VOCAB"]
