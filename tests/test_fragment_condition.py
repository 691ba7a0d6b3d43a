"""Fragment conditioning of the bond model (issue 30): random training fragments, the fragment
held clean in the noisy state and out of the loss, the network's fixed-atom input (equivariant,
inert when grown from a plain network), and sampling around a user's fragment without replacement."""

import numpy as np
import pytest
import torch

from moldiff.data.random_fragments import random_fragments
from moldiff.loss.fields import FieldLoss, in_fragment_frame, noised
from moldiff.nn.bond_egnn import BondEGNN, add_fragment_input, add_self_conditioning
from moldiff.state import MolState
from test_bond_model import _model, _random_state, training_module
from test_inpaint import FRAG_BONDS, FRAG_X, FRAG_Z, _write_sdf

H = 0  # QM9's vocabulary: H, C, N, O, F


def _alkanes(lengths, seed=0):
    """Straight-chain alkanes C_nH_(2n+2) as a ``MolState`` (types H=0 / C=1, single bonds)."""
    g = torch.Generator().manual_seed(seed)
    types, bonds, sizes = [], [], []
    for m in lengths:
        heavy = list(range(m))
        h = [c for c in heavy for _ in range(4 - (c > 0) - (c < m - 1))]  # each carbon's hydrogens
        n = m + len(h)
        t = [1] * m + [H] * len(h)
        b = {(c, c + 1) for c in heavy[:-1]} | {(c, m + k) for k, c in enumerate(h)}
        types += t
        bonds.append(b)
        sizes.append(n)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    state = MolState(batch, len(sizes), pos=torch.randn(len(batch), 3, generator=g, dtype=torch.float64),
                     atom_type=torch.tensor(types), charge=torch.ones(len(batch), dtype=torch.long))
    starts = np.cumsum([0] + sizes)
    bond = [1 if (i - starts[mol], j - starts[mol]) in bonds[mol] else 0
            for (i, j), mol in zip(state.pairs.tolist(), state.pair_batch.tolist())]
    return state.replace(bond=torch.tensor(bond))


def test_random_fragments_are_connected_pieces_with_their_hydrogens():
    state = _alkanes([1, 2, 5, 9, 9, 9, 7, 6] * 8)
    fixed = random_fragments(state, 1.0, H, torch.Generator().manual_seed(0))
    pairs, bond = state.pairs[state.bond > 0].tolist(), state.bond[state.bond > 0]
    heavy = state.atom_type != H
    two_pieces = 0
    for mol in range(state.n_mol):
        atoms = (state.batch == mol).nonzero()[:, 0]
        f, hv = fixed[atoms], heavy[atoms]
        n_heavy = int(hv.sum())
        if n_heavy < 2:
            assert not f.any()  # a single heavy atom leaves nothing to condition on
            continue
        assert 1 <= int((f & hv).sum()) <= n_heavy - 1  # something fixed, something left to make
        for i, j in pairs:  # each hydrogen shares its heavy atom's fate
            if state.batch[i] == mol and heavy[i] != heavy[j]:
                assert fixed[i] == fixed[j]
        # the fixed heavy atoms of a chain form one run, or two (a linker's sides)
        chain = f[:n_heavy].int().tolist()
        runs = sum(1 for k, v in enumerate(chain) if v and (k == 0 or not chain[k - 1]))
        assert runs in (1, 2)
        two_pieces += runs == 2
    assert two_pieces > 0 and len(bond) > 0
    none = random_fragments(state, 0.0, H, torch.Generator().manual_seed(0))
    assert not none.any()
    half = random_fragments(state, 0.5, H, torch.Generator().manual_seed(1))
    assert 0 < int(state.replace(fixed=half).held().sum()) < state.n_mol


def _net(fragment_condition=True, self_condition=False):
    torch.manual_seed(0)
    net = BondEGNN(5, 3, 5, hidden=16, layers=2, self_condition=self_condition, fragment_condition=fragment_condition).double()
    for block in net.egnn.blocks:
        torch.nn.init.normal_(block.update.coord_mlp[4].weight, std=0.1)
    return net


def test_fragment_conditioned_network_is_equivariant_and_reads_the_flag():
    net, state = _net(), _random_state()
    state = state.replace(fixed=torch.tensor([True, True, False, False, False, False, False, False]))
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    out = net(state, t)
    moved = net(state.replace(pos=state.pos @ q.T + shift), t)
    assert (moved["pos"] - (out["pos"] @ q.T + shift)).abs().max() < 1e-10
    for key in ("atom_type", "charge", "bond"):
        assert (moved[key] - out[key]).abs().max() < 1e-10
    # the molecule with a fragment keeps its displacement's mean; the one without is zero-CoM as before
    dx = out["pos"] - state.pos
    assert dx[:5].mean(0).abs().max() > 1e-6 and dx[5:].mean(0).abs().max() < 1e-12
    assert (net(state.replace(fixed=None), t)["atom_type"] - out["atom_type"]).abs().max() > 1e-6


@pytest.mark.parametrize("self_condition", [False, True])
def test_a_plain_network_grows_an_inert_fixed_atom_input(self_condition):
    plain, state = _net(False, self_condition), _random_state()
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    grown = _net(True, self_condition)
    width = (5 + 3) * (2 if self_condition else 1)
    grown.load_state_dict(add_fragment_input(plain.state_dict(), width), strict=True)
    prev = plain(state, t) if self_condition else None
    want, got = plain(state, t, previous=prev), grown(state, t, previous=prev)
    assert all((got[k] - want[k]).abs().max() < 1e-12 for k in want)
    # self-conditioning added afterwards goes in before the flag, where the grown network reads it
    if not self_condition:
        both = _net(True, True)
        both.load_state_dict(add_self_conditioning(grown.state_dict(), 5, 3, 5), strict=True)
        got = both(state, t, previous=both(state, t))
        assert all((got[k] - want[k]).abs().max() < 1e-12 for k in want)


def test_fragment_stays_clean_in_the_noisy_state_and_out_of_the_loss():
    model = _model(fragment_condition=True)
    state = _alkanes([3, 4]).replace(pos=_alkanes([3, 4]).pos.float())
    fixed = torch.zeros(len(state.batch), dtype=torch.bool)
    fixed[[0, 1, 3, 4, 5, 6, 7]] = True  # C1, C2 of propane and their hydrogens; butane free
    state = state.replace(fixed=fixed)
    framed = in_fragment_frame(state)
    assert framed.pos[fixed].mean(0).abs().max() < 1e-6
    assert (framed.pos[state.batch == 1] - state.pos[state.batch == 1]).abs().max() == 0
    t = torch.tensor([0.7, 0.7])
    zt = noised(framed, t, model.sde, model.processes, torch.Generator().manual_seed(0))
    assert torch.equal(zt.pos[fixed], framed.pos[fixed]) and torch.equal(zt.atom_type[fixed], state.atom_type[fixed])
    both = fixed[state.pairs[:, 0]] & fixed[state.pairs[:, 1]]
    assert torch.equal(zt.bond[both], state.bond[both])
    assert not torch.equal(zt.pos[~fixed], framed.pos[~fixed])
    # free atoms of the held molecule: isotropic noise, not projected to zero mean; butane's is
    eps = (zt.pos - model.sde.alpha(t, state.batch) * framed.pos) / model.sde.sigma(t, state.batch)
    assert eps[state.batch == 0].mean(0).abs().max() > 1e-3 and eps[state.batch == 1].mean(0).abs().max() < 1e-5

    class Oracle(torch.nn.Module):  # exact on free atoms and pairs, wrong on what is fixed
        fragment_condition = False

        def forward(self, st, tt):
            big = torch.full_like(framed.pos, 50.0)
            logits = {k: torch.nn.functional.one_hot(getattr(state, k), n).double() * 60 for k, n in
                      (("atom_type", 5), ("charge", 3), ("bond", 5))}
            logits["atom_type"][fixed] = logits["atom_type"][fixed].flip(1)
            logits["bond"][both] = logits["bond"][both].flip(1)
            return {"pos": torch.where(fixed[:, None], big, framed.pos), **logits}

    loss = FieldLoss(model.sde, model.processes, time_weight="none")
    total, terms = loss(Oracle(), state, torch.Generator().manual_seed(0), t=t)
    assert total.abs().max() < 1e-12 and all(v.abs().max() < 1e-12 for v in terms.values())
    _, unheld = loss(Oracle(), state.replace(fixed=None), torch.Generator().manual_seed(0), t=t)
    assert unheld["pos"][0] > 1.0  # the same errors count where nothing is fixed


def test_training_loss_draws_fragments_only_for_a_conditioned_network():
    state = _alkanes([3, 4, 5, 6]).replace(pos=_alkanes([3, 4, 5, 6]).pos.float())
    plain, held = _model(), _model(fragment_condition=True)
    t = torch.full((4,), 0.5)
    for model in (plain, held):
        loss = FieldLoss(model.sde, model.processes, fragment=1.0, hydrogen=H)
        got, _ = loss(model.denoise_fn(False), state, torch.Generator().manual_seed(0), t=t)
        assert torch.isfinite(got).all()
    # the plain network's loss keeps its random stream: same value with or without the share
    a, _ = FieldLoss(plain.sde, plain.processes, fragment=1.0, hydrogen=H)(plain.denoise_fn(False), state, torch.Generator().manual_seed(0), t=t)
    b, _ = FieldLoss(plain.sde, plain.processes, fragment=0.0)(plain.denoise_fn(False), state, torch.Generator().manual_seed(0), t=t)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="share of molecules"):
        FieldLoss(plain.sde, plain.processes, fragment=1.5)


def test_conditioned_model_samples_around_a_fragment_without_replacement(tmp_path):
    sdf = _write_sdf(tmp_path / "frag.sdf", FRAG_Z, FRAG_X, FRAG_BONDS, charges=[0, 0, 0])
    model = _model(fragment_condition=True)
    mols = model.sample(5, steps=4, seed=1, fragment=sdf, n_atoms=6)
    for i in range(len(mols)):
        z, x = mols[i]
        assert z[:3].tolist() == FRAG_Z and np.abs(x[:3] - FRAG_X).max() < 1e-4
        assert mols.charges_of(i)[:3].tolist() == [0, 0, 0]
        b = mols.bonds_of(i)
        assert sorted(tuple(r) for r in b.tolist() if r[1] < 3) == sorted(FRAG_BONDS)
        assert {r[0] for r in b.tolist() if r[0] < 3 <= r[1]} <= {0}  # anchors="auto": only C is open
        assert mols.fixed[mols.offsets[i]: mols.offsets[i + 1]].tolist() == [True] * 3 + [False] * 3
    # free atoms start around the fragment (N(0, I) about its centroid), not about the origin
    assert np.abs(mols.positions[~mols.fixed].mean(0) - FRAG_X.mean(0)).max() < 3.0
    # the same seed gives the same molecules; no fragment: plain sampling as before
    again = model.sample(5, steps=4, seed=1, fragment=sdf, n_atoms=6)
    assert np.array_equal(again.positions, mols.positions)
    assert model.sample(3, steps=3, seed=0).fixed is None
    for bad in ({"reconstruction": 2.0}, {"resample": 2}):
        with pytest.raises(ValueError, match="trained with fragments"):
            model.sample(2, steps=2, fragment=sdf, n_atoms=5, **bad)


def test_train_py_warm_start_adds_the_fixed_atom_input(tmp_path):
    from moldiff.jobs.train import warm_start

    module = training_module

    old = module()  # a checkpoint from before the switch existed: no fragment_condition key
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": dict(old.hparams)}, path)
    new = module(fragment_condition=True, self_condition=False)
    warm_start(new, path)
    state = _random_state().replace(pos=_random_state().pos.float())
    t = torch.tensor([0.3, 0.8])
    for ema in (False, True):
        want, got = old.model.network(ema)(state, t), new.model.network(ema)(state, t)
        assert all((got[k] - want[k]).abs().max() < 1e-5 for k in want)
    warm_start(module(fragment_condition=False), path)  # the switch off, explicitly: the same model
    with pytest.raises(ValueError, match="differs from this run's"):
        warm_start(module(fragment_condition=True, hidden=8), path)


def test_a_plain_run_grows_in_place_with_its_optimizer_moments(tmp_path):
    """``python -m moldiff.train.grow``: a plain run's resume checkpoint becomes a fragment-conditioned
    run's, network, EMA and Adam moments alike, the new column inert (zero weight, zero moments)."""
    from moldiff.model.checkpoint import read_checkpoint
    from moldiff.train.grow import grow_fragment_condition, main

    module = training_module

    old = module()
    opt = old.configure_optimizers()
    state = _alkanes([3, 4]).replace(pos=_alkanes([3, 4]).pos.float())
    old.batch_loss(state, False, torch.Generator().manual_seed(0)).mean().backward()
    opt.step()
    old.model.update_ema()
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": old.state_dict(), "optimizer_states": [opt.state_dict()], "hyper_parameters": dict(old.hparams)}, path)
    main([str(path), str(tmp_path / "grown" / "last.ckpt")])
    grown = read_checkpoint(tmp_path / "grown" / "last.ckpt")
    new = module(fragment_condition=True)
    new.load_state_dict(grown["state_dict"], strict=True)
    new_opt = new.configure_optimizers()
    new_opt.load_state_dict(grown["optimizer_states"][0])
    moments = new_opt.state[new.model.net.egnn.embedding.weight]
    before = opt.state[old.model.net.egnn.embedding.weight]
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert torch.equal(moments[key][:, :8], before[key][:, :8]) and torch.equal(moments[key][:, 9:], before[key][:, 8:])
        assert not moments[key][:, 8].any()
    t = torch.tensor([0.3, 0.8])
    probe = _random_state().replace(pos=_random_state().pos.float())
    for ema in (False, True):
        want, got = old.model.network(ema)(probe, t), new.model.network(ema)(probe, t)
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert grown["hyper_parameters"]["model"]["fragment_condition"] is True
    new.batch_loss(state, False, torch.Generator().manual_seed(0)).mean().backward()
    new_opt.step()  # the grown optimizer steps the grown network
    with pytest.raises(ValueError, match="already"):
        grow_fragment_condition(grown)
    with pytest.raises(SystemExit, match="exists"):
        main([str(path), str(tmp_path / "grown" / "last.ckpt")])
