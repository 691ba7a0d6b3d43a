"""The bond model (issue 29): the molecule state's layout, the categorical process against its
closed forms, the network's symmetries, the loss and a sampled toy distribution."""

import itertools

import numpy as np
import pytest
import torch

from moldiff.data.elements import vocabulary
from moldiff.data.molecules import MoleculeSet
from moldiff.data.state_dataset import StateDataset, dense_bonds
from moldiff.loss.fields import FieldLoss, noised
from moldiff.model.bond_model import BondDiffusionModel
from moldiff.nn.bond_egnn import BondEGNN
from moldiff.noise.categorical import CategoricalProcess, draw
from moldiff.sampling.fields import sample_fields
from moldiff.state import MolState, pair_layout

# --- the state ---------------------------------------------------------------------------------


def test_pair_layout_lists_every_unordered_pair_once_in_order():
    batch = torch.tensor([0] * 4 + [1] * 1 + [2] * 3)
    pairs, pb = pair_layout(batch, 3)
    expected = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (5, 6), (5, 7), (6, 7)]
    assert [tuple(p) for p in pairs.tolist()] == expected and pb.tolist() == [0] * 6 + [2] * 3
    # large molecules: the closed-form row inversion holds for every rank
    sizes = torch.tensor([1, 2, 57, 181])
    pairs, pb = pair_layout(torch.repeat_interleave(torch.arange(4), sizes), 4)
    ref = []
    start = 0
    for n in sizes.tolist():
        ref += [(start + i, start + j) for i, j in itertools.combinations(range(n), 2)]
        start += n
    assert [tuple(p) for p in pairs.tolist()] == ref


def test_directed_edges_cover_both_directions_with_their_pair():
    state = MolState(torch.tensor([0, 0, 0, 1, 1]), 2)
    src, dst, pair = state.directed_edges()
    assert len(src) == 2 * len(state.pairs) == 8
    assert bool((dst[1:] >= dst[:-1]).all())  # grouped by dst, as the fused kernels prefer
    for s, d, p in zip(src.tolist(), dst.tolist(), pair.tolist()):
        assert sorted((s, d)) == state.pairs[p].tolist()


def _labelled():
    """Two tiny molecules with bonds: formaldehyde (C=O, 2 C-H) and HCN (C#N, C-H), one charge."""
    a = MoleculeSet.from_list([([6, 8, 1, 1], np.random.default_rng(0).normal(size=(4, 3))),
                               ([1, 6, 7], np.random.default_rng(1).normal(size=(3, 3)))])
    return MoleculeSet(a.numbers, a.positions, a.offsets, charges=[0, 0, 0, 0, 0, 0, -1],
                       bonds=[(0, 1, 2), (0, 2, 1), (0, 3, 1), (0, 1, 1), (1, 2, 3)], bond_offsets=[0, 3, 5])


def test_dataset_makes_dense_pair_classes_and_marginals():
    ds = StateDataset(_labelled(), vocabulary("qm9"), (-1, 0, 1))
    state = ds[np.array([1, 0])]
    # HCN first: pairs (0,1) H-C single, (0,2) none, (1,2) triple; then formaldehyde's six pairs
    assert state.bond.tolist() == [1, 0, 3] + [2, 1, 1, 0, 0, 0]
    assert state.charge.tolist() == [1, 1, 0] + [1] * 4  # class indices of (-1, 0, 1)
    m = ds.marginals()
    assert m["bond"] == pytest.approx([4 / 9, 3 / 9, 1 / 9, 1 / 9, 0.0])
    assert m["charge"] == pytest.approx([1 / 7, 6 / 7, 0.0])
    with pytest.raises(ValueError, match="formal charges \\[-1\\] are not among"):
        StateDataset(_labelled(), vocabulary("qm9"), (0, 1))


# --- the categorical process -------------------------------------------------------------------


def _process(nu=1.0):
    return CategoricalProcess([0.5, 0.3, 0.15, 0.05], nu)


def test_forward_marginals_equal_their_closed_form_and_compose():
    p = _process(1.5)
    m = p.marginal
    x0 = torch.tensor([0, 1, 2, 3])
    for t in (0.0, 0.3, 0.7, 1.0):
        keep = np.cos(np.pi * t / 2) ** 3
        expect = keep * np.eye(4) + (1 - keep) * m.numpy()[None]
        got = p.marginal_probs(x0, torch.full((4,), t, dtype=torch.float64), dtype=torch.float64).numpy()
        assert np.abs(got - expect).max() < 1e-12
    # q(x_t | x_0) = sum_k q(x_s = k | x_0) q(x_t | x_s = k) with the transition's a = keep_t / keep_s
    s, t = 0.2, 0.6
    qs = p.marginal_probs(x0, torch.full((4,), s, dtype=torch.float64), dtype=torch.float64)
    a = float(p.keep(torch.tensor(t, dtype=torch.float64)) / p.keep(torch.tensor(s, dtype=torch.float64)))
    Q = a * torch.eye(4, dtype=torch.float64) + (1 - a) * m[None]
    assert (qs @ Q - p.marginal_probs(x0, torch.full((4,), t, dtype=torch.float64), dtype=torch.float64)).abs().max() < 1e-12
    # empirical frequencies of perturb match the closed form
    draws = p.perturb(torch.zeros(200_000, dtype=torch.long), torch.full((200_000,), 0.5), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / 200_000
    assert (freq - p.marginal_probs(torch.tensor([0]), torch.tensor([0.5]), dtype=torch.float64)[0]).abs().max() < 0.005


def test_reverse_posterior_equals_brute_force_and_sums_to_one():
    p = _process(1.0)
    rng = np.random.default_rng(0)
    s, t = 0.35, 0.55
    keep = lambda u: float(p.keep(torch.tensor(u, dtype=torch.float64)))  # noqa: E731
    m = p.marginal.numpy()
    Qbar = lambda u: keep(u) * np.eye(4) + (1 - keep(u)) * m[None]  # noqa: E731  rows: x0, cols: x_u
    a = keep(t) / keep(s)
    Qts = a * np.eye(4) + (1 - a) * m[None]  # rows: x_s, cols: x_t
    for _ in range(5):
        p0 = rng.dirichlet(np.ones(4))
        for j in range(4):
            # p(x_s = k | x_t = j) = sum_c p0(c) q(x_s = k, x_t = j | c) / q(x_t = j | c), by enumeration
            brute = np.array([sum(p0[c] * Qbar(s)[c, k] * Qts[k, j] / Qbar(t)[c, j] for c in range(4)) for k in range(4)])
            got = p.posterior(torch.tensor([j]), torch.tensor(p0[None]), torch.tensor([s], dtype=torch.float64), torch.tensor([t], dtype=torch.float64))[0].numpy()
            assert abs(got.sum() - 1) < 1e-12
            assert np.abs(got - brute / brute.sum()).max() < 1e-12
            assert abs(brute.sum() - 1) < 1e-9  # the marginalised posterior is normalised by itself


def test_posterior_with_a_certain_clean_class_walks_to_it():
    p = _process()
    probs = p.posterior(torch.tensor([3]), torch.tensor([[0.0, 0.0, 1.0, 0.0]], dtype=torch.float64),
                        torch.tensor([0.0]), torch.tensor([0.4]))
    assert probs[0].tolist() == pytest.approx([0, 0, 1, 0])


def test_draw_frequencies():
    probs = torch.tensor([[0.1, 0.6, 0.3]], dtype=torch.float64).expand(100_000, 3)
    freq = torch.bincount(draw(probs, torch.Generator().manual_seed(1)), minlength=3).double() / 1e5
    assert (freq - probs[0]).abs().max() < 0.005


# --- the network -------------------------------------------------------------------------------


def _random_state(seed=0, sizes=(5, 3)):
    g = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    state = MolState(batch, len(sizes), pos=torch.randn(len(batch), 3, generator=g, dtype=torch.float64),
                     atom_type=torch.randint(0, 5, (len(batch),), generator=g), charge=torch.randint(0, 3, (len(batch),), generator=g))
    return state.replace(bond=torch.randint(0, 5, (len(state.pairs),), generator=g))


def _net(self_condition=False):
    torch.manual_seed(0)
    net = BondEGNN(5, 3, 5, hidden=16, layers=2, self_condition=self_condition).double()
    for block in net.egnn.blocks:  # larger coordinate updates than the initialisation's, to test them
        torch.nn.init.normal_(block.update.coord_mlp[4].weight, std=0.1)
    return net


def _previous(net, state, t):
    """A previous estimate to self-condition on (None for a network without self-conditioning)."""
    return net(state, t) if net.self_condition else None


@pytest.mark.parametrize("self_condition", [False, True])
def test_positions_equivariant_and_every_other_output_invariant(self_condition):
    net, state = _net(self_condition), _random_state()
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    prev = _previous(net, state, t)
    out = net(state, t, previous=prev)
    moved = net(state.replace(pos=state.pos @ q.T + shift), t, previous=prev)
    # translation: the EGNN sees relative positions only; x0 = x_t + displacement moves with x_t
    assert (moved["pos"] - (out["pos"] @ q.T + shift)).abs().max() < 1e-10
    for key in ("atom_type", "charge", "bond"):
        assert (moved[key] - out[key]).abs().max() < 1e-10


@pytest.mark.parametrize("self_condition", [False, True])
def test_bonds_permute_with_the_atoms(self_condition):
    net, state = _net(self_condition), _random_state(sizes=(6,))
    t = torch.tensor([0.5], dtype=torch.float64)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])  # new atom k is old atom perm[k]
    inv = torch.argsort(perm)
    old_pair = {tuple(p): k for k, p in enumerate(state.pairs.tolist())}
    new_bond = torch.tensor([state.bond[old_pair[tuple(sorted((int(perm[i]), int(perm[j]))))]] for i, j in state.pairs.tolist()])
    permuted = state.replace(pos=state.pos[perm], atom_type=state.atom_type[perm], charge=state.charge[perm], bond=new_bond)
    prev = _previous(net, state, t)
    a = net(state, t, previous=prev)
    b = net(permuted, t, previous=None if prev is None else {
        "atom_type": prev["atom_type"][perm], "charge": prev["charge"][perm],
        "bond": torch.stack([prev["bond"][old_pair[tuple(sorted((int(perm[i]), int(perm[j]))))]] for i, j in permuted.pairs.tolist()])})
    assert (b["pos"] - a["pos"][perm]).abs().max() < 1e-10 and (b["atom_type"] - a["atom_type"][perm]).abs().max() < 1e-10
    for k, (i, j) in enumerate(permuted.pairs.tolist()):
        assert (b["bond"][k] - a["bond"][old_pair[tuple(sorted((int(perm[i]), int(perm[j]))))]]).abs().max() < 1e-10
    assert inv.numel() == 6


def test_self_conditioning_uses_the_previous_estimate_and_only_when_built_with_it():
    net, state = _net(True), _random_state()
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    first = net(state, t)
    second = net(state, t, previous=first)
    assert (second["bond"] - first["bond"]).abs().max() > 1e-6  # the previous estimate changes the output
    assert (second["atom_type"] - first["atom_type"]).abs().max() > 1e-6
    with pytest.raises(ValueError, match="without self_condition"):
        _net(False)(state, t, previous=first)


def test_a_network_without_self_conditioning_starts_one_with_it_predicting_the_same():
    """``add_self_conditioning``: the self-conditioned network made from a plain one predicts what
    the plain one did, with no previous estimate and with one (its new inputs start inert), and
    then learns to use them (its new weights get gradients)."""
    from moldiff.nn.bond_egnn import add_self_conditioning

    plain, state = _net(False), _random_state()
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    grown = BondEGNN(5, 3, 5, hidden=16, layers=2, self_condition=True).double()
    grown.load_state_dict(add_self_conditioning(plain.state_dict(), 5, 3, 5), strict=True)
    want = plain(state, t)
    for previous in (None, grown(state, t)):
        got = grown(state, t, previous=previous)
        for key in want:
            assert (got[key] - want[key]).abs().max() < 1e-12, key
    out = grown(state, t, previous=grown(state, t))
    (out["bond"].square().sum() + out["atom_type"].square().sum()).backward()
    assert grown.bond_head[0].weight.grad[:, -5:].abs().max() > 0 and grown.egnn.embedding.weight.grad[:, 8:16].abs().max() > 0


# --- loss, model and sampler -------------------------------------------------------------------

NOISE = {"schedule": "polynomial", "power": 2.0, "precision": 1e-5, "prediction": "x0"}
FEATURES = {"vocabulary": "qm9", "charges": [-1, 0, 1]}


def _model(marginals=None, hidden=16, self_condition=False, fragment_condition=False):
    torch.manual_seed(0)
    marginals = marginals or {"atom_type": [0.5, 0.3, 0.1, 0.05, 0.05], "charge": [0.01, 0.98, 0.01], "bond": [0.8, 0.15, 0.03, 0.02, 0.0]}
    return BondDiffusionModel({"name": "bond_egnn", "hidden": hidden, "layers": 2, "self_condition": self_condition,
                               "fragment_condition": fragment_condition},
                              NOISE, FEATURES, {4: 1, 3: 1}, marginals)


def test_loss_is_finite_weighted_and_backpropagates():
    model = _model()
    ds = StateDataset(_labelled(), vocabulary("qm9"), (-1, 0, 1))
    batch = ds[np.array([0, 1])]
    loss = FieldLoss(model.sde, model.processes, time_weight="none")
    t = torch.tensor([0.2, 0.9])
    total, terms = loss(model.denoise_fn(False), batch, torch.Generator().manual_seed(0), t=t)
    assert set(terms) == {"pos", "atom_type", "charge", "bond"}
    expect = 3 * terms["pos"] + 0.4 * terms["atom_type"] + terms["charge"] + 2 * terms["bond"]
    assert torch.allclose(total, expect)
    total.sum().backward()
    assert all(p.grad is not None for p in model.net.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="unknown fields"):
        FieldLoss(model.sde, model.processes, {"bonds": 1.0})


def test_self_conditioned_loss_is_the_second_pass_given_the_first():
    model = _model(self_condition=True)
    ds = StateDataset(_labelled(), vocabulary("qm9"), (-1, 0, 1))
    batch, t = ds[np.array([0, 1])], torch.tensor([0.2, 0.9])
    net = model.denoise_fn(False)
    for share in (0.0, 1.0):
        loss = FieldLoss(model.sde, model.processes, time_weight="none", self_condition=share)
        got, _ = loss(net, batch, torch.Generator().manual_seed(0), t=t)
        # the same noisy state, by the same draws: the loss draws its share after the noise
        g = torch.Generator().manual_seed(0)
        zt = noised(batch, t, model.sde, model.processes, g)
        plain = FieldLoss(model.sde, model.processes, time_weight="none", self_condition=0.0)
        first = net(zt, t) if share else None
        expect, _ = plain(lambda s, tt, previous=None: net(s, tt, previous=first), batch, torch.Generator().manual_seed(0), t=t)
        assert torch.allclose(got, expect), share
    with pytest.raises(ValueError, match="share of self-conditioned"):
        FieldLoss(model.sde, model.processes, self_condition=1.5)


def test_sampler_feeds_a_self_conditioned_network_its_previous_estimate():
    model = _model(self_condition=True)
    net, seen = model.denoise_fn(False), []
    def spy(state, t, previous=None):
        seen.append(previous)
        return net(state, t, previous=previous)
    spy.self_condition = True
    sample_fields("ancestral", spy, model.sde, model.processes, torch.tensor([4, 3]), steps=3,
                  generator=torch.Generator().manual_seed(0))
    assert len(seen) == 4 and seen[0] is None and all(p is not None for p in seen[1:])
    mols = model.sample(2, steps=3, seed=0)
    assert np.array_equal(model.sample(2, steps=3, seed=0).bonds, mols.bonds)


class _Oracle(torch.nn.Module):
    """A 'network' that knows the toy distribution: positions and types fixed, and for the one pair
    that varies, the exact clean-class probabilities given the noisy state (its prior is
    ``target``, its forward process known, so p(x0 | x_t) follows from Bayes' rule)."""

    def __init__(self, process, target, pos, types):
        super().__init__()
        self.process, self.target, self.pos, self.types = process, torch.tensor(target, dtype=torch.float64), pos, types
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, state, t):
        tb = t.double()[state.pair_batch]
        lik = torch.stack([self.process.marginal_probs(torch.full_like(state.bond, c), tb, torch.float64)[torch.arange(len(state.bond)), state.bond]
                           for c in range(5)], 1)  # q(x_t | c)
        post = lik * self.target
        post = post / post.sum(1, keepdim=True)
        n = len(state.batch)
        onehot = torch.nn.functional.one_hot(self.types.repeat(state.n_mol), 5).double()
        return {"pos": self.pos.repeat(state.n_mol, 1).to(state.pos.dtype), "atom_type": 50 * onehot,
                "charge": torch.tensor([0.0, 50.0, 0.0]).expand(n, 3), "bond": post.log()}


def test_sampling_a_toy_distribution_reproduces_its_bond_frequencies():
    """Two-atom 'molecules' whose one bond is none / single / double / triple with known
    frequencies: the ancestral sampler, fed exact clean-class probabilities, must draw them."""
    target = [0.1, 0.5, 0.3, 0.1, 0.0]
    model = _model({"atom_type": [0.2] * 5, "charge": [0.1, 0.8, 0.1], "bond": [0.4, 0.3, 0.2, 0.1, 0.0]})
    oracle = _Oracle(model.processes["bond"], target, torch.tensor([[0.0, 0, 0.6], [0, 0, -0.6]]), torch.tensor([1, 1]))
    n = 4000
    state = sample_fields("ancestral", oracle, model.sde, model.processes, torch.full((n,), 2), steps=20,
                          generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(state.bond, minlength=5).double() / n
    se = np.sqrt(np.array(target) * (1 - np.array(target)) / n)
    assert np.all(np.abs(freq.numpy() - target) < 4 * se + 1e-9), (freq, target)
    with pytest.raises(ValueError, match="cannot step categorical fields"):
        sample_fields("ode_heun", oracle, model.sde, model.processes, torch.full((2,), 2), steps=2)


def test_model_samples_decode_to_molecules_with_bonds_and_round_trip_a_file(tmp_path):
    model = _model()
    mols = model.sample(3, steps=3, seed=0)
    assert mols.has_bonds and mols.charges is not None and len(mols) == 3
    assert set(np.unique(mols.charges).tolist()) <= {-1, 0, 1}
    again = model.sample(3, steps=3, seed=0)
    assert np.array_equal(again.bonds, mols.bonds) and np.array_equal(again.positions, mols.positions)
    path = model.save(tmp_path / "bonds.ckpt")
    loaded = BondDiffusionModel.load(path)
    assert np.array_equal(loaded.sample(3, steps=3, seed=0).bonds, mols.bonds)
    assert len(model.sample(4, steps=2, sizes=5)) == 4  # an int size, as the command line takes it


def test_model_samples_with_the_recommended_options_as_the_gaussian_model_does():
    """``BondDiffusionModel.sample`` takes the sampler's recommended options (the same dict as
    ``DiffusionModel.sample``); ``late_noise=1`` overrides them back to the exact posterior."""
    from moldiff.sampling.samplers import RECOMMENDED_OPTIONS

    model = _model()
    default = model.sample(3, steps=4, seed=0)
    explicit = model.sample(3, steps=4, seed=0, **RECOMMENDED_OPTIONS["ancestral"])
    exact = model.sample(3, steps=4, seed=0, late_noise=1.0)
    assert np.array_equal(default.positions, explicit.positions)
    assert not np.allclose(default.positions, exact.positions)


def test_dense_bonds_empty_molecule_set():
    mols = MoleculeSet(np.array([1, 1]), np.zeros((2, 3)), np.array([0, 1, 2]), bonds=np.zeros((0, 3)), bond_offsets=[0, 0, 0])
    state = MolState(torch.tensor([0, 1]), 2)
    assert dense_bonds(mols, state).numel() == 0


def test_sample_py_writes_the_bond_models_own_bonds_and_charges(tmp_path):
    """scripts/sample.py with a bond model's checkpoint: its own default steps (100), the records
    carry the model's bonds as generated (SDF property bonds=model), and evaluate reads them."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from moldiff.data.user import read_molecules
    from moldiff.jobs import sample as sample_job

    path = _model().save(tmp_path / "bonds.ckpt")
    root = Path(__file__).resolve().parents[1]
    with initialize_config_dir(str(root / "configs"), version_base="1.3"):
        cfg = compose("sample", [f"ckpt={path}", "n=3", "sizes=4", "steps=3", "evaluation.reference=null", "evaluation.novelty=null",
                                 f"output={tmp_path / 'out'}"])
        result = sample_job.run_sampling(cfg, tmp_path)
    mols, _ = read_molecules(tmp_path / "out" / "samples.sdf")
    direct = BondDiffusionModel.load(path).sample(3, steps=3, sizes=4, seed=0)
    assert mols.bonds.tolist() == direct.bonds.tolist() and mols.charges.tolist() == direct.charges.tolist()
    from rdkit import Chem

    records = list(Chem.SDMolSupplier(str(tmp_path / "out" / "samples.sdf"), sanitize=False, removeHs=False))
    assert [r.GetProp("bonds") for r in records] == ["model"] * 3
    assert result["written_graph"]["n"] == 3
    assert sample_job.steps_of(compose_default(), BondDiffusionModel.load(path)) == 100


def compose_default():
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        return compose("sample", [])


def training_module(**model):
    """A tiny bond model's LightningModule (``model`` overrides its network config)."""
    from moldiff.train.bond_module import BondDiffusionModule

    torch.manual_seed(0)
    marginals = {"atom_type": [0.5, 0.3, 0.1, 0.05, 0.05], "charge": [0.01, 0.98, 0.01], "bond": [0.8, 0.15, 0.03, 0.02, 0.0]}
    return BondDiffusionModule({"name": "bond_egnn", "hidden": 16, "layers": 2, **model}, NOISE, {}, FEATURES,
                               {"lr": 1e-3}, {4: 1, 3: 1}, marginals)


def test_train_py_warm_start_adds_self_conditioning_to_a_bond_checkpoint(tmp_path):
    """``init_from=<bond checkpoint> model.self_condition=true``: the warm start grows the plain
    network's weights into the self-conditioned one (net and EMA alike); any other change of the
    model config is still refused."""
    from moldiff.jobs.train import warm_start

    module = training_module
    old = module()
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": dict(old.hparams)}, path)
    new = module(self_condition=True)
    warm_start(new, path)
    state = _random_state().replace(pos=_random_state().pos.float())
    t = torch.tensor([0.3, 0.8])
    for ema in (False, True):
        want = old.model.network(ema)(state, t)
        got = new.model.network(ema)(state, t, previous=new.model.network(ema)(state, t))
        assert all((got[k] - want[k]).abs().max() < 1e-5 for k in want)
    with pytest.raises(ValueError, match="differs from this run's"):
        warm_start(module(self_condition=True, hidden=8), path)
