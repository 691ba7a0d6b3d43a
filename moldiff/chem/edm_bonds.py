"""EDM's bond-order rule (Hoogeboom et al. 2022, ``qm9/bond_analyze.py``), vectorised.

The tables are EDM's (typical bond lengths in pm) and so are the margins (10, 5, 3 pm, tuned by
EDM to maximise the stability of real QM9). A pair within ``bonds1 + margin1`` is bonded; if the
pair has a double-bond length and is within ``bonds2 + margin2`` the order is 2; if it also has a
triple-bond length and is within ``bonds3 + margin3``, 3. Pairs missing from ``bonds1`` are never
bonded (EDM's ``check_exists``; for QM9's elements every pair is present).

EDM looks pairs up in vocabulary-index order (``sorted`` over type indices), and ``bonds2`` is
not symmetric (C-S has a double-bond length, S-C does not), so lookups here use the same order.
Distances are float32, as EDM computed them from float32 tensors.
"""

from __future__ import annotations

import numpy as np

from moldiff.data.elements import Vocabulary

BONDS1 = {
    "H": {"H": 74, "C": 109, "N": 101, "O": 96, "F": 92, "B": 119, "Si": 148, "P": 144, "As": 152, "S": 134, "Cl": 127, "Br": 141, "I": 161},
    "C": {"H": 109, "C": 154, "N": 147, "O": 143, "F": 135, "Si": 185, "P": 184, "S": 182, "Cl": 177, "Br": 194, "I": 214},
    "N": {"H": 101, "C": 147, "N": 145, "O": 140, "F": 136, "Cl": 175, "Br": 214, "S": 168, "I": 222, "P": 177},
    "O": {"H": 96, "C": 143, "N": 140, "O": 148, "F": 142, "Br": 172, "S": 151, "P": 163, "Si": 163, "Cl": 164, "I": 194},
    "F": {"H": 92, "C": 135, "N": 136, "O": 142, "F": 142, "S": 158, "Si": 160, "Cl": 166, "Br": 178, "P": 156, "I": 187},
    "B": {"H": 119, "Cl": 175},
    "Si": {"Si": 233, "H": 148, "C": 185, "O": 163, "S": 200, "F": 160, "Cl": 202, "Br": 215, "I": 243},
    "Cl": {"Cl": 199, "H": 127, "C": 177, "N": 175, "O": 164, "P": 203, "S": 207, "B": 175, "Si": 202, "F": 166, "Br": 214},
    "S": {"H": 134, "C": 182, "N": 168, "O": 151, "S": 204, "F": 158, "Cl": 207, "Br": 225, "Si": 200, "P": 210, "I": 234},
    "Br": {"Br": 228, "H": 141, "C": 194, "O": 172, "N": 214, "Si": 215, "S": 225, "F": 178, "Cl": 214, "P": 222},
    "P": {"P": 221, "H": 144, "C": 184, "O": 163, "Cl": 203, "S": 210, "F": 156, "N": 177, "Br": 222},
    "I": {"H": 161, "C": 214, "Si": 243, "N": 222, "O": 194, "S": 234, "F": 187, "I": 266},
    "As": {"H": 152},
}
BONDS2 = {
    "C": {"C": 134, "N": 129, "O": 120, "S": 160},
    "N": {"C": 129, "N": 125, "O": 121},
    "O": {"C": 120, "N": 121, "O": 121, "P": 150},
    "P": {"O": 150, "S": 186},
    "S": {"P": 186},
}
BONDS3 = {"C": {"C": 120, "N": 116, "O": 113}, "N": {"C": 116, "N": 110}, "O": {"C": 113}}
MARGIN1, MARGIN2, MARGIN3 = 10, 5, 3

# EDM's valency table: an atom is stable when its summed bond order is (one of) these.
ALLOWED_BONDS = {
    "H": 1, "C": 4, "N": 3, "O": 2, "F": 1, "B": 3, "Al": 3, "Si": 4, "P": [3, 5],
    "S": 4, "Cl": 1, "As": 3, "Br": 1, "I": 1, "Hg": [1, 2], "Bi": [3, 5],
}


def threshold_tables(vocab: Vocabulary) -> np.ndarray:
    """(3, V, V) thresholds in pm for orders 1, 2, 3, indexed [order-1, lower index, higher index].

    -inf where a pair has no such bond, so ``d < t`` is always false there.
    """
    v = len(vocab)
    t = np.full((3, v, v), -np.inf)
    for i, a in enumerate(vocab.symbols):
        for j, b in enumerate(vocab.symbols):
            lo, hi = (a, b) if i <= j else (b, a)  # EDM's sorted-by-index lookup
            if hi not in BONDS1.get(lo, {}):
                continue
            t[0, i, j] = BONDS1[lo][hi] + MARGIN1
            if hi in BONDS2.get(lo, {}):
                t[1, i, j] = BONDS2[lo][hi] + MARGIN2
                if hi in BONDS3.get(lo, {}):
                    t[2, i, j] = BONDS3[lo][hi] + MARGIN3
    return t


def allowed_valence_table(vocab: Vocabulary, max_valence: int = 16) -> np.ndarray:
    """(V, max_valence + 1) bool: allowed[type, summed bond order]."""
    allowed = np.zeros((len(vocab), max_valence + 1), bool)
    for i, s in enumerate(vocab.symbols):
        v = ALLOWED_BONDS.get(s, [])
        allowed[i, [v] if isinstance(v, int) else v] = True
    return allowed


def bond_order(types_a: np.ndarray, types_b: np.ndarray, dist: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """EDM's ``get_bond_order`` for arrays of pairs: types are vocabulary indices, dist in Å (float32)."""
    lo, hi = np.minimum(types_a, types_b), np.maximum(types_a, types_b)
    d = np.asarray(dist, np.float32) * np.float32(100)  # pm, in float32 as EDM
    t = tables[:, lo, hi]
    single = d < t[0]
    double = single & (d < t[1])
    triple = double & (d < t[2])
    return single.astype(np.int8) + double + triple
