import numpy as np
import pytest

from moldiff.data import MoleculeSet
from moldiff.metrics.distribution import distribution_distances, geometry_stats, total_variation
from moldiff.metrics.protocols import run_corrected


def _stats(mols):
    return geometry_stats(mols, *run_corrected(mols, workers=1).bonds)


def test_total_variation():
    assert total_variation({"C": 1, "H": 1}, {"C": 1, "H": 1}) == 0
    assert total_variation({"C": 3, "H": 1}, {"C": 1, "H": 3}) == pytest.approx(0.5)
    assert total_variation({"C": 1}, {"N": 5}) == pytest.approx(1.0)


def test_water_angle_and_length():
    z = np.array([8, 1, 1])
    th = np.radians(104.5)
    x = np.array([[0, 0, 0], [0.96, 0, 0], [0.96 * np.cos(th), 0.96 * np.sin(th), 0]])
    s = _stats(MoleculeSet.from_list([(z, x)]))
    assert s.bond_angles["H-O-H"] == pytest.approx([104.5], abs=1e-3)
    assert s.bond_lengths["H-O"] == pytest.approx([0.96, 0.96], abs=1e-5)


def test_identical_sets_are_at_zero_and_shift_is_measured(qm9_test):
    sub = qm9_test.subset(np.arange(500))
    ref = _stats(sub)
    same = distribution_distances(ref, ref, min_count=10)
    assert same["atom_type_tv"] == 0 and same["bond_length_w1"]["weighted_mean"] == 0
    # Scaling every molecule by 1 % changes each bond length by 1 %: W1 = 0.01 x mean length.
    scaled = MoleculeSet(sub.numbers, sub.positions * 1.01, sub.offsets)
    d = distribution_distances(geometry_stats(scaled, *run_corrected(sub, workers=1).bonds), ref, min_count=10)
    cc = ref.bond_lengths["C-C"]
    assert d["bond_length_w1"]["per_type"]["C-C"] == pytest.approx(0.01 * cc.mean(), rel=1e-3)
    assert d["bond_angle_w1"]["weighted_mean"] < 1e-3  # angles are scale-invariant


def test_w1_without_a_common_bond_type_is_undefined_not_nan(qm9_test):
    ref = _stats(qm9_test.subset(np.arange(200)))
    apart = MoleculeSet.from_list([(np.array([6, 6]), np.array([[0.0, 0, 0], [8.0, 0, 0]]))])  # no bond at all
    d = distribution_distances(_stats(apart), ref, min_count=10)
    assert d["bond_length_w1"]["weighted_mean"] is None and d["bond_angle_w1"]["weighted_mean"] is None
    assert "C-C" in d["bond_length_w1"]["missing_types"]
