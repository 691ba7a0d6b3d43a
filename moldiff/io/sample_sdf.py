"""What the sampling jobs' ``samples.sdf`` and ``samples_valid.sdf`` hold.

Each record of ``samples.sdf`` is one molecule, with

* the model's own bonds and formal charges where it makes them (``MoleculeSet.has_bonds``);
* else the corrected protocol's bonds and formal charges where perception finds a valid structure
  (written Kekulé, so RDKit reads the record with its default settings);
* else EDM's distance-table bonds (such a record may not sanitise in RDKit: the molecule is invalid);

and the SDF properties ``bonds`` (``model``, ``perceived`` or ``edm``) and ``edm_valid``,
``edm_stable``, ``corrected_valid``, ``corrected_stable`` (1 or 0). The properties are computed on
the coordinates as the file holds them (4 decimals), so they agree molecule by molecule with
``scripts/evaluate.py`` on the file (``metrics.json``).

``samples_valid.sdf`` holds the corrected protocol's structure of every molecule it calls valid,
and nothing else: as many records as the corrected validity counts, each loading in RDKit with
default settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moldiff.chem.edm_protocol import edm_bond_graph
from moldiff.chem.edm_rdkit import edm_rdkit_mols
from moldiff.data.elements import Vocabulary
from moldiff.data.molecules import MoleculeSet
from moldiff.io.convert import own_bonds_mol, perceived_structures
from moldiff.io.writers import write_sdf
from moldiff.metrics.protocols import run_edm, valence_rule


@dataclass
class SampleRecords:
    mols: list  # RDKit molecules, one per record of samples.sdf
    properties: list[dict]  # the SDF properties of each record
    valid: list  # the corrected protocol's Kekulé molecule where it calls the molecule valid, else None


def as_written(mols: MoleculeSet) -> MoleculeSet:
    """``mols`` with coordinates rounded as an SDF holds them (``%10.4f``), so that figures
    computed here are those of the file read back."""
    rounded = np.char.mod("%.4f", mols.positions.astype(np.float64)).astype(np.float64)
    return MoleculeSet(mols.numbers, rounded, mols.offsets, dict(mols.properties), mols.charges, mols.bonds, mols.bond_offsets)


def sample_records(mols: MoleculeSet, vocab: Vocabulary) -> SampleRecords:
    from rdkit import Chem  # RDKit only where SDF files are made

    mols = as_written(mols)
    edm = run_edm(mols, vocab)
    perceived = perceived_structures(mols, valence_rule(vocab))
    edm_mols = edm_rdkit_mols(mols, edm_bond_graph(mols, vocab))
    out = SampleRecords([], [], [])
    for m, p in enumerate(perceived):
        valid = p.failure is None and p.mol is not None
        kekule = None
        if valid:
            kekule = Chem.Mol(p.mol)
            Chem.Kekulize(kekule, clearAromaticFlags=True)  # bond types 1/2 in the file: no aromatic query bonds
        if mols.has_bonds:
            mol, source = own_bonds_mol(mols, m), "model"
        elif valid:
            mol, source = kekule, "perceived"
        else:
            mol, source = edm_mols[m], "edm"
        out.mols.append(mol)
        out.valid.append(kekule)
        out.properties.append({"bonds": source, "edm_valid": int(edm.smiles[m] is not None), "edm_stable": int(edm.mol_stable[m]),
                               "corrected_valid": int(valid), "corrected_stable": int(p.ok)})
    return out


def write_sample_sdfs(folder, mols: MoleculeSet, vocab: Vocabulary, names: list[str]) -> SampleRecords:
    """``samples.sdf`` and ``samples_valid.sdf`` in ``folder``; returns what they hold."""
    records = sample_records(mols, vocab)
    write_sdf(folder / "samples.sdf", records.mols, names, records.properties)
    keep = [k for k, mol in enumerate(records.valid) if mol is not None]
    write_sdf(folder / "samples_valid.sdf", [records.valid[k] for k in keep], [names[k] for k in keep],
              [{**records.properties[k], "bonds": "perceived"} for k in keep])
    return records
