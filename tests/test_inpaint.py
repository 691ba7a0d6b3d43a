"""Substructure-constrained sampling against the closed form (issue 30).

Gaussian point clouds (``moldiff.analytic``): per axis a, a molecule is N(0, d_a^2 P) on the
zero-CoM subspace, i.e. N atoms drawn independently around an unknown centre. Given k fixed atoms
at file coordinates y_F, each free atom j, in the file's frame, is Gaussian with

    mean  = mean(y_F)                  (per axis)
    var   = d_a^2 (1 + 1/k),           cov(free j, free l) = d_a^2 / k,

(the centre's posterior given the fragment is N(mean y_F, d_a^2 / k)). The sampler with the RePaint
callback must reproduce this; a callback that puts the fragment back at its file coordinates and
re-centres the molecule (the naive treatment of the centre of mass) must not.
"""

import torch

from moldiff.analytic import GaussianPointClouds
from moldiff.geometry import remove_mean
from moldiff.noise import VPSDE, get_schedule
from moldiff.sampling import sample
from moldiff.sampling.base import sizes_to_batch
from moldiff.sampling.inpaint import Inpaint
from moldiff.state import MolState

N, K, M = 5, 2, 2000
Y_F = torch.tensor([[3.0, -2.0, 4.0], [4.0, -1.0, 2.0]], dtype=torch.float64)  # far from the origin on purpose


class NaiveInpaint(Inpaint):
    """The wrong treatment: fixed atoms noised around their file coordinates, then the molecule re-centred."""

    def replace_positions(self, pos, s):
        if s is None:
            return torch.where(self.fixed[:, None], self.file_pos.to(pos.dtype), pos)
        tt = torch.full((self.n,), float(s), dtype=pos.dtype)
        noised = self.sde.alpha(tt, self.batch) * self.file_pos + self.sde.sigma(tt, self.batch) * torch.randn(pos.shape, generator=self.generator, dtype=pos.dtype)
        return remove_mean(torch.where(self.fixed[:, None], noised, pos), self.batch, self.n)


def _run(cls, steps=300, seed=0):
    sde = VPSDE(get_schedule("polynomial"))
    data = GaussianPointClouds(sde)
    batch, n = sizes_to_batch([N] * M)
    fixed = (torch.arange(N * M) % N) < K
    pos = torch.zeros(N * M, 3, dtype=torch.float64)
    pos[fixed] = Y_F.repeat(M, 1)
    features = torch.zeros(N * M, data.feat_dim, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    inpaint = cls(sde, fixed, pos, batch, n, g, features=features)
    final = inpaint.finish(sample("ancestral", data.eps, sde, [N] * M, data.feat_dim, steps, generator=g, dtype=torch.float64,
                                  callback=inpaint))
    return final, fixed, data


def _free_stats(final, fixed):
    free = final.pos[~fixed].view(M, N - K, 3)
    mean = free.mean((0, 1))
    centred = free - free.mean(0)
    var = centred.square().mean((0, 1))
    cov = (centred[:, 0] * centred[:, 1]).mean(0)  # two different free atoms
    return mean, var, cov


class GuidedInpaint(Inpaint):
    """Replacement plus reconstruction guidance with the exact clean estimate of the point clouds."""

    def __init__(self, sde, fixed, pos, batch, n, g, features=None):
        data = GaussianPointClouds(sde)

        def estimate(state, t):
            return sde.x0_from_eps(state, data.eps(state, t), t).pos

        super().__init__(sde, fixed, pos, batch, n, g, features=features, reconstruction=2.0, estimate=estimate)


def test_reconstruction_guidance_leaves_the_closed_form_conditional_alone():
    """For point clouds the fragment's shape is independent of the free atoms, so the exact estimate
    of it does not depend on them and guidance must not move anything: the same molecules."""
    plain, _, _ = _run(Inpaint, steps=30)
    guided, _, _ = _run(GuidedInpaint, steps=30)
    assert (plain.pos - guided.pos).abs().max() < 1e-9


def test_fixed_atoms_are_kept_exactly_in_the_file_frame():
    final, fixed, _ = _run(Inpaint, steps=5)
    assert (final.pos[fixed] - Y_F.repeat(M, 1)).abs().max() < 1e-12
    assert final.atom_type[fixed].abs().max() == 0  # clean features of the fixed atoms


def test_free_atoms_follow_the_closed_form_conditional_and_the_naive_centre_does_not():
    target_mean = Y_F.mean(0)
    final, fixed, data = _run(Inpaint)
    d2 = data.axis_std**2
    mean, var, cov = _free_stats(final, fixed)
    se_mean = (d2 * (1 + 1 / K) / M).sqrt() * 2  # free atoms of one molecule share the centre: inflate
    assert ((mean - target_mean).abs() < 4 * se_mean).all(), (mean, target_mean)
    # 300 ancestral steps leave the variances ~3 % low (the sampler's own bias, test_samplers.py)
    assert torch.allclose(var, d2 * (1 + 1 / K), rtol=0.1), (var, d2 * (1 + 1 / K))
    assert torch.allclose(cov, d2 / K, rtol=0.2, atol=0.02), (cov, d2 / K)
    naive, fixed, _ = _run(NaiveInpaint, steps=100)
    nmean, nvar, _ = _free_stats(naive, fixed)
    assert ((nmean - target_mean).abs() > 10 * se_mean).any(), (nmean, target_mean)


# --- fragments through the models -------------------------------------------------------------------

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from moldiff.data.fragment import load_fragment, parse_n_atoms  # noqa: E402
from moldiff.data.molecules import MoleculeSet  # noqa: E402


def _write_sdf(path, numbers, positions, bonds=(), charges=None):
    from rdkit import Chem

    from moldiff.chem.rdkit_mol import make_mol

    mol = make_mol(numbers, positions, tuple(zip(*bonds)) if bonds else None, explicit_h_only=True)
    for atom, q in zip(mol.GetAtoms(), charges or [0] * len(numbers)):
        atom.SetFormalCharge(int(q))
    Chem.MolToMolFile(mol, str(path), kekulize=False)
    return path


# formaldehyde-like fragment C=O with one H, coordinates away from the origin
FRAG_Z = [6, 8, 1]
FRAG_X = np.array([[2.0, 1.0, -1.0], [3.2, 1.0, -1.0], [1.4, 1.9, -1.0]])
FRAG_BONDS = [(0, 1, 2), (0, 2, 1)]


def test_gaussian_model_keeps_a_fragment_file_exactly(tmp_path):
    from moldiff.model.diffusion import DiffusionModel

    sdf = _write_sdf(tmp_path / "frag.sdf", FRAG_Z, FRAG_X, FRAG_BONDS)
    mols = DiffusionModel.load("shipped").sample(6, steps=10, seed=0, fragment=sdf, n_atoms="7-9")
    assert set(mols.n_atoms.tolist()) <= {7, 8, 9} and mols.fixed is not None
    for i in range(len(mols)):
        z, x = mols[i]
        fixed = mols.fixed[mols.offsets[i] : mols.offsets[i + 1]]
        assert fixed.tolist() == [True] * 3 + [False] * (len(z) - 3)
        assert z[:3].tolist() == FRAG_Z and np.abs(x[:3] - FRAG_X).max() < 1e-4
    with pytest.raises(ValueError, match="deterministic"):
        DiffusionModel.load("shipped").sample(2, sampler="ode_heun", steps=2, fragment=sdf, n_atoms=8)
    with pytest.raises(ValueError, match="more than 2"):
        DiffusionModel.load("shipped").sample(2, steps=2, fragment=sdf, n_atoms=2)


def test_bond_model_keeps_elements_charges_positions_and_bonds(tmp_path):
    from test_bond_model import _model

    sdf = _write_sdf(tmp_path / "frag.sdf", FRAG_Z, FRAG_X, FRAG_BONDS, charges=[0, 0, 0])
    mols = _model().sample(5, steps=4, seed=1, fragment=sdf, n_atoms=6)
    for i in range(len(mols)):
        z, x = mols[i]
        assert z[:3].tolist() == FRAG_Z and np.abs(x[:3] - FRAG_X).max() < 1e-4
        assert mols.charges_of(i)[:3].tolist() == [0, 0, 0]
        b = mols.bonds_of(i)
        among_fixed = sorted(tuple(r) for r in b.tolist() if r[1] < 3)
        assert among_fixed == sorted(FRAG_BONDS)
        # anchors="auto": only C (valence 3 of 4) may bond to new atoms; O and H are full
        assert {r[0] for r in b.tolist() if r[0] < 3 <= r[1]} <= {0}
    chosen = _model().sample(5, steps=4, seed=1, fragment=sdf, n_atoms=6, anchors=[1])
    assert all({r[0] for r in chosen.bonds_of(i).tolist() if r[0] < 3 <= r[1]} <= {1} for i in range(5))
    xyz = tmp_path / "frag.xyz"
    xyz.write_text("3\n\n" + "".join(f"{s} {a} {b} {c}\n" for s, (a, b, c) in zip("COH", FRAG_X)))
    with pytest.raises(ValueError, match="an XYZ has none"):
        _model().sample(2, steps=2, fragment=xyz, n_atoms=5)


def test_fragment_anchors_are_the_atoms_with_an_open_valence():
    from pathlib import Path

    from moldiff.data.fragment import fragment_anchors, load_fragment

    root = Path(__file__).resolve().parents[1]
    frag = load_fragment(root / "datasets" / "examples" / "qm9_test_5777_fragment.sdf")
    # three heavy atoms were cut from QM9 test molecule 5777: C1 lost one neighbour, C4 two, C5 one
    assert np.flatnonzero(fragment_anchors(frag)).tolist() == [1, 4, 5]
    assert fragment_anchors(frag, "all").all() and np.flatnonzero(fragment_anchors(frag, [0, 13])).tolist() == [0, 13]
    with pytest.raises(ValueError, match="from 0 to 13"):
        fragment_anchors(frag, [14])
    with pytest.raises(ValueError, match="'auto', 'all' or a list"):
        fragment_anchors(frag, "some")


def test_bad_fragments_get_one_line_each(tmp_path):
    from moldiff.data.elements import QM9_VOCAB

    flat = _write_sdf(tmp_path / "flat.sdf", FRAG_Z, FRAG_X * [1, 1, 0])
    close = _write_sdf(tmp_path / "close.sdf", FRAG_Z, np.array([[0, 0, 0.0], [0.2, 0, 0.1], [1, 1, 1]]))
    sulfur = _write_sdf(tmp_path / "s.sdf", [16, 1, 1], FRAG_X)
    junk = tmp_path / "junk.sdf"
    junk.write_text("not a molfile\n\n\n  x  y\nM  END\n$$$$\n")
    cases = [(flat, "2D drawing"), (close, "overlap"), (sulfur, "outside the model's vocabulary"), (junk, "could not be read"),
             (tmp_path / "missing.sdf", "no file")]
    for path, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            load_fragment(path, QM9_VOCAB)
        assert "\n" not in str(err.value)
    assert parse_n_atoms("12-15") == (12, 15) and parse_n_atoms(9) == (9, 9)
    for bad in ("15-12", "a", "0", "1-2-3"):
        with pytest.raises(ValueError, match="n_atoms"):
            parse_n_atoms(bad)


def test_n_atoms_without_a_fragment_and_the_untrained_warning():
    from moldiff.model.diffusion import DiffusionModel

    model = DiffusionModel.load("shipped")
    assert model.sample(3, steps=2, n_atoms=19).n_atoms.tolist() == [19, 19, 19]
    with pytest.warns(UserWarning, match="3 of 3 requested atom counts are outside"):
        model.sample(3, steps=2, n_atoms="40-41")
    assert isinstance(model.sample(1, steps=2, n_atoms=5), MoleculeSet)


def test_sample_py_takes_a_fragment_and_n_atoms(tmp_path):
    """The command line (scripts/sample.py's job) with the example fragment shipped in the repo:
    fixed atoms kept in samples.sdf, bad inputs one line before anything is sampled."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from moldiff.data.user import read_molecules
    from moldiff.jobs import sample as sample_job

    root = Path(__file__).resolve().parents[1]
    frag = root / "datasets" / "examples" / "qm9_test_5777_fragment.sdf"
    with initialize_config_dir(str(root / "configs"), version_base="1.3"):
        cfg = lambda *o: compose("sample", list(o))  # noqa: E731
        sample_job.run_sampling(cfg(f"fragment={frag}", "n_atoms=19", "n=3", "steps=5", "evaluation=null", f"output={tmp_path / 'a'}"), tmp_path)
        mols, _ = read_molecules(tmp_path / "a" / "samples.sdf")
        given, _ = read_molecules(frag)
        for i in range(3):
            z, x = mols[i]
            assert len(z) == 19 and z[:14].tolist() == given.numbers.tolist()
            assert np.abs(x[:14] - given.positions).max() < 1e-4  # the SDF's 4 decimals
        with pytest.raises(ValueError, match="only the bond model makes bonds"):
            sample_job.run_sampling(cfg(f"fragment={frag}", "n_atoms=19", "n=2", "steps=2", "anchors=[1]", f"output={tmp_path / 'e'}"), tmp_path)
        with pytest.raises(ValueError, match="more than 12"):
            sample_job.run_sampling(cfg(f"fragment={frag}", "n_atoms=12", "n=2", "steps=2", f"output={tmp_path / 'b'}"), tmp_path)
        assert not (tmp_path / "b" / "samples.sdf").exists()
        # the shipped bond model keeps the fragment's bonds too
        sample_job.run_sampling(cfg("ckpt=qm9-bonds", f"fragment={frag}", "n_atoms=19", "n=2", "steps=5", "evaluation=null",
                                    f"output={tmp_path / 'c'}"), tmp_path)
        mols, _ = read_molecules(tmp_path / "c" / "samples.sdf")
        pairs = lambda rows: {(min(i, j), max(i, j), o) for i, j, o in rows.tolist()}  # noqa: E731
        for i in range(2):
            assert pairs(mols.bonds_of(i)) >= pairs(given.bonds_of(0)) != set()
            assert np.abs(mols[i][1][:14] - given.positions).max() < 1e-4
        sample_job.run_sampling(cfg("n_atoms=19", "n=2", "steps=2", "evaluation=null", f"output={tmp_path / 'd'}"), tmp_path)
        assert read_molecules(tmp_path / "d" / "samples.sdf")[0].n_atoms.tolist() == [19, 19]


def test_resampling_redoes_each_step_and_keeps_the_fragment(tmp_path):
    """resample=r: r network calls per ancestral step (RePaint's jumps of one step), fragment exact;
    refused for other samplers and without a fragment."""
    from moldiff.model.diffusion import DiffusionModel

    sdf = _write_sdf(tmp_path / "frag.sdf", FRAG_Z, FRAG_X, FRAG_BONDS)
    model = DiffusionModel.load("shipped")
    calls = []
    net = model.ema.module
    hook = net.register_forward_hook(lambda *a: calls.append(1))
    try:
        mols = model.sample(2, steps=4, seed=0, fragment=sdf, n_atoms=6, resample=3, progress=False)
    finally:
        hook.remove()
    assert len(calls) == 4 * 3 + 4 + 1  # 4 steps redone 3 times, one guidance pass each, the final denoising
    calls.clear()
    hook = net.register_forward_hook(lambda *a: calls.append(1))
    try:
        plain = model.sample(2, steps=4, seed=0, fragment=sdf, n_atoms=6, resample=3, reconstruction=0, progress=False)
    finally:
        hook.remove()
    assert len(calls) == 4 * 3 + 1 and np.abs(plain.positions[plain.fixed] - mols.positions[mols.fixed]).max() < 1e-4
    with pytest.raises(ValueError, match="reconstruction must be >= 0"):
        model.sample(2, steps=2, fragment=sdf, n_atoms=6, reconstruction=-1)
    assert np.abs(mols.positions[mols.fixed] - np.tile(FRAG_X, (2, 1))).max() < 1e-4
    with pytest.raises(ValueError, match="resample"):
        model.sample(2, steps=2, sampler="pc", fragment=sdf, n_atoms=6, resample=2)
    with pytest.raises(ValueError, match="resample"):
        model.sample(2, steps=2, resample=2)


def test_reconstruction_guidance_moves_free_atoms_down_the_fragment_error_only():
    """guide(): free atoms move by -w alpha / 2 times the gradient of the fragment's shape error in
    the estimate; fixed atoms keep their shape, the centre of mass stays zero, and an estimate in
    which the fragment does not depend on the free atoms moves nothing."""
    g = torch.Generator().manual_seed(0)
    batch, n = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 2
    fixed = torch.tensor([True, True, False, False] * 2)
    file_pos = torch.randn(8, 3, generator=g, dtype=torch.float64)
    pos = torch.randn(8, 3, generator=g, dtype=torch.float64)
    pos = pos - _mean(pos, batch, n)[batch]
    sde = VPSDE(get_schedule("polynomial"))

    first = torch.tensor([1.0, 0, 0, 0] * 2, dtype=torch.float64)[:, None]

    def pulled(state, t):  # each fragment's first atom drifts with the free atoms' centroid (its shape changes)
        free = torch.where(fixed[:, None], torch.zeros_like(state.pos), state.pos)
        return state.pos + 0.3 * first * (_mean(free, batch, n) * 2)[batch]

    state = MolState(batch, n, pos=pos)
    inp = Inpaint(sde, fixed, file_pos, batch, n, g, reconstruction=2.0, estimate=pulled)
    out = inp.guide(state, 0.3)
    moved = out.pos - pos
    assert moved[~fixed].abs().max() > 1e-3
    assert _mean(out.pos, batch, n).abs().max() < 1e-12  # zero centre of mass kept
    shape = lambda x: x[fixed].view(n, 2, 3) - x[fixed].view(n, 2, 3).mean(1, keepdim=True)  # noqa: E731
    assert (shape(out.pos) - shape(pos)).abs().max() < 1e-12  # the fragment's shape untouched
    # the step is -w alpha / 2 times the gradient (recomputed here by hand), up to the mean shift
    z = pos.clone().requires_grad_(True)
    x0 = pulled(MolState(batch, n, pos=z), None)
    err = x0 - torch.stack([x0[fixed & (batch == m)].mean(0) for m in range(n)])[batch] - inp.shape
    (grad,) = torch.autograd.grad(err[fixed].square().sum(), z)
    grad[fixed] = 0
    alpha = sde.alpha(torch.full((n,), 0.3, dtype=torch.float64), batch)
    expect = -2.0 * alpha / 2 * (grad - _mean(grad, batch, n)[batch])
    assert (moved - expect).abs().max() < 1e-12
    still = Inpaint(sde, fixed, file_pos, batch, n, g, reconstruction=2.0, estimate=lambda st, t: st.pos * 1.0)
    assert (still.guide(state, 0.3).pos - pos).abs().max() < 1e-12
    with pytest.raises(ValueError, match="reconstruction"):
        Inpaint(sde, fixed, file_pos, batch, n, g, reconstruction=1.0)


def _mean(x, batch, n):
    return torch.zeros(n, x.shape[1], dtype=x.dtype).index_add_(0, batch, x) / torch.bincount(batch, minlength=n)[:, None].to(x.dtype)
