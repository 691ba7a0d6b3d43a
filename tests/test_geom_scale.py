"""GEOM-Drugs scale (issue 17): batches bounded by atoms / edges (every molecule once per epoch, a
pure function of (seed, epoch), resumable, DDP shards, oversized molecules alone), atom-bounded
sampling, and the EGNN's radius graph (equivariant, the full graph when r is large, fused = plain).
The exact-resume test with bounded batches is in tests/test_train.py."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from equivariance import assert_equivariant
from moldiff.data import loader as loader_mod
from moldiff.data.loader import EpochBatchSampler, ResumableLoader, pack_batches
from moldiff.nn.egnn import EGNN
from moldiff.nn.graph import fully_connected_edges

ROOT = Path(__file__).resolve().parents[1]
# GEOM-like atom counts: mostly 20-70, a few large ones, two over the bound of 200 atoms / 20,000 edges
SIZES = np.concatenate([np.random.default_rng(0).integers(3, 70, 400), [120, 181, 150, 2, 1, 240, 201]])


def _check_epoch(s: EpochBatchSampler, sizes, max_atoms=None, max_edges=None):
    batches = list(s)
    seen = np.concatenate(batches)
    assert len(seen) == len(sizes) and len(np.unique(seen)) == len(sizes)  # each molecule exactly once
    alone = 0
    for b in batches:
        atoms, edges = sizes[b].sum(), (sizes[b] * (sizes[b] - 1)).sum()
        over = (max_atoms is not None and atoms > max_atoms) or (max_edges is not None and edges > max_edges)
        if over:  # only ever a single molecule that alone exceeds a bound
            assert len(b) == 1
            alone += 1
    return batches, alone


@pytest.mark.parametrize("bounds", [{"max_atoms": 200}, {"max_edges": 20_000}, {"max_atoms": 200, "max_edges": 20_000}])
def test_bounded_batches_cover_the_epoch_once_and_respect_the_bound(bounds):
    s = EpochBatchSampler(len(SIZES), 64, seed=3, sizes=SIZES, **bounds)
    over_edges = int((SIZES * (SIZES - 1) > 20_000).sum())
    assert over_edges == 4  # 150, 181, 240, 201
    # over 200 atoms: 240, 201; over 20,000 edges: N >= 142; over either: the union
    want = {frozenset({"max_atoms"}): 2, frozenset({"max_edges"}): 4, frozenset({"max_atoms", "max_edges"}): 4}[frozenset(bounds)]
    assert s.oversized == want
    first, alone = _check_epoch(s, SIZES, **bounds)
    assert alone == want  # every oversized molecule got its own batch, none dropped
    assert len(s) == len(first)
    order = np.concatenate(first)
    assert not np.array_equal(order, np.arange(len(SIZES)))  # shuffled
    # a pure function of (seed, epoch): a new sampler gives the same batches; another epoch others
    again = EpochBatchSampler(len(SIZES), 64, seed=3, sizes=SIZES, **bounds)
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and len(list(again)) == len(first)
    s.set_epoch(1)
    second, _ = _check_epoch(s, SIZES, **bounds)
    assert not np.array_equal(np.concatenate(second), order)
    s.set_epoch(0)
    s.skip = 5  # resume: the rest of the epoch, exactly
    rest = list(s)
    assert len(rest) == len(first) - 5 and all(np.array_equal(a, b) for a, b in zip(rest, first[5:]))


def test_pack_batches_is_next_fit():
    sizes = np.array([5, 5, 5, 12, 1, 3, 9, 9])
    cuts = pack_batches(sizes, max_atoms=10)
    assert cuts.tolist() == [0, 2, 3, 4, 6, 7, 8]  # [5,5] [5] [12 alone] [1,3] [9] [9]
    assert pack_batches(sizes, max_edges=40).tolist() == [0, 2, 3, 4, 6, 7, 8]  # 20+20, 20, 132 alone, 0+6, 72, 72
    assert pack_batches(np.array([], dtype=np.int64), max_atoms=3).tolist() == [0]


def test_bounded_batches_shard_over_ddp_ranks(monkeypatch):
    world = 2
    per_rank = []
    for rank in range(world):
        monkeypatch.setattr(loader_mod, "_dist_rank_world", lambda rank=rank: (rank, world))
        s = EpochBatchSampler(len(SIZES), 64, seed=1, sizes=SIZES, max_atoms=300)
        per_rank.append(list(s))
        left_out = s.left_out
    assert len(per_rank[0]) == len(per_rank[1])  # the same number of steps on every rank
    ids = np.concatenate([np.concatenate(b) for b in per_rank])
    assert len(np.unique(ids)) == len(ids)  # disjoint
    assert len(ids) + left_out == len(SIZES)  # the rest waits for the next epoch's shuffle (< 1 batch per rank)
    assert left_out <= 300
    # batch k went to rank k % world: the one-process cut, dealt out
    monkeypatch.setattr(loader_mod, "_dist_rank_world", lambda: (0, 1))
    single = list(EpochBatchSampler(len(SIZES), 64, seed=1, sizes=SIZES, max_atoms=300))
    assert all(np.array_equal(single[2 * k + r], per_rank[r][k]) for r in range(world) for k in range(len(per_rank[0])))


def test_loader_state_records_bounds_and_refuses_another_cut_mid_epoch():
    from moldiff.data.elements import QM9_VOCAB
    from moldiff.data.features import FeatureLayout
    from moldiff.data.loader import MoleculeDataset
    from moldiff.data.molecules import MoleculeSet

    mols = MoleculeSet.from_list([([6] + [1] * (k % 9), np.random.default_rng(k).normal(size=(k % 9 + 1, 3))) for k in range(40)])
    ds = MoleculeDataset(mols, FeatureLayout(QM9_VOCAB))
    plain = ResumableLoader(ds, EpochBatchSampler(len(ds), 8, seed=0))
    assert set(plain.state_dict()) == {"epoch", "trained", "seed"}  # what batch_size runs always saved
    bounded = ResumableLoader(ds, EpochBatchSampler(len(ds), 8, seed=0, sizes=ds.mols.n_atoms, max_atoms=30))
    bounded.mark_trained(0, 2)
    state = bounded.state_dict()
    assert state["max_atoms"] == 30 and state["max_edges"] is None and state["batches"] == len(bounded.batch_sampler_)
    assert all(b.x.shape[0] <= 30 for b in bounded)
    again = ResumableLoader(ds, EpochBatchSampler(len(ds), 8, seed=0, sizes=ds.mols.n_atoms, max_atoms=30))
    again.load_state_dict(state)
    assert [b.n_mol for b in again] == [b.n_mol for b in list(bounded)[2:]]
    other = ResumableLoader(ds, EpochBatchSampler(len(ds), 8, seed=0, sizes=ds.mols.n_atoms, max_atoms=40))
    with pytest.raises(ValueError, match="mid-epoch with batch bounds"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="mid-epoch with batch bounds"):
        plain.load_state_dict(state)
    other.load_state_dict({**state, "trained": state["batches"]})  # at the epoch's end a new cut is fine
    with pytest.raises(ValueError, match="need the atom counts"):
        EpochBatchSampler(len(ds), 8, max_atoms=30)


def _cfg(*overrides):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("train", ["experiment=tiny", *overrides])


def test_defaults_unchanged_and_bad_values_refused():
    from moldiff.jobs import train as train_run

    cfg = _cfg()
    assert cfg.batch_atoms is None and cfg.batch_edges is None
    assert cfg.model.edges == "full" and cfg.model.cutoff is None
    assert train_run._batch_bounds(cfg, None) == {}  # the plain EpochBatchSampler(n, batch_size, seed) of before
    for bad, message in [({"batch_atoms": 0}, "batch_atoms must be"), ({"batch_edges": -5}, "batch_edges must be"),
                         ({"model": {"cutoff": 5.0}}, "only used with edges='radius'"), ({"model": {"edges": "radius"}}, "needs a cutoff > 0")]:
        with pytest.raises(ValueError, match=message):
            train_run.check_config(OmegaConf.merge(cfg, bad))
    train_run.check_config(OmegaConf.merge(cfg, {"batch_atoms": 2000, "batch_edges": 150000, "model": {"edges": "radius", "cutoff": 5.0}}))


def test_sampling_in_atom_bounded_batches():
    from moldiff.model.diffusion import DiffusionModel

    model = DiffusionModel({"name": "egnn", "hidden": 8, "layers": 1}, {"schedule": "polynomial", "power": 2.0, "precision": 1e-5},
                           {"vocabulary": "qm9"}, {5: 1, 9: 1, 25: 1, 40: 1}, ema_decay=0)
    sizes = [5, 9, 25, 9, 5, 5, 40]
    seen = []
    mols = model.sample(7, steps=2, sizes=sizes, batch_atoms=20, on_batch=lambda k, m: seen.append(m.n_atoms.tolist()))
    assert seen == [[5, 9], [25], [9, 5, 5], [40]]  # <= 20 atoms, or one molecule alone
    assert mols.n_atoms.tolist() == sizes
    again = model.sample(7, steps=2, sizes=sizes, batch_atoms=20)
    assert np.array_equal(again.positions, mols.positions)  # same seed and bound, same molecules


# --- radius graph ------------------------------------------------------------------------------------
def _molecules(sizes, seed=0, dtype=torch.float64):
    """Compact clouds of drug-like density (about 1 atom per 10 A^3), so a 5 A cutoff cuts."""
    g = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x = torch.cat([torch.randn(n, 3, generator=g, dtype=dtype) * (0.9 * n ** (1 / 3)) for n in sizes])
    h = torch.randn(len(batch), 6, generator=g, dtype=dtype)
    t = torch.rand(len(sizes), generator=g, dtype=dtype)
    return x, h, t, batch, len(sizes)


def _model(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    model = EGNN(6, hidden=16, layers=3, normalization_factor=10.0, dtype=dtype, **kw)
    for block in model.blocks:  # EDM's init makes coordinate updates tiny: enlarge them
        block.update.coord_mlp[4].weight.data.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
@pytest.mark.parametrize("fused", [True, False])
def test_radius_graph_is_e3_equivariant(dtype, tol, fused):
    model = _model(dtype, edges="radius", cutoff=5.0, fused=fused)
    x, h, t, batch, n = _molecules((60, 45, 3), dtype=dtype)
    src, _ = model.build_edges(x, batch, n)
    assert 0.2 * 5406 < len(src) < 0.8 * 5406  # the cutoff really cuts (60*59 + 45*44 + 3*2 full edges)
    ex, eh = model(x, h, t, batch, n)
    # a reflection too (E(3), not just SE(3)), a translation of each molecule, atoms reordered
    assert_equivariant(lambda xi, hi, bi: model(xi, hi, t, bi, n), x, h, batch, n, seed=2, shift=4.0, permute=True,
                       atol=tol * max(1.0, ex.abs().max().item()), atol_h=tol * max(1.0, eh.abs().max().item()),
                       reference=(ex, eh))


def test_radius_graph_with_a_large_cutoff_is_the_full_graph():
    x, h, t, batch, n = _molecules((181, 60, 30), dtype=torch.float32)
    full, radius = _model(torch.float32), _model(torch.float32, edges="radius", cutoff=1e4)
    out = []
    for model in (full, radius):
        xi = x.clone().requires_grad_(True)
        ex, eh = model(xi, h, t, batch, n)
        (ex.square().sum() + eh.sum()).backward()
        out.append((ex.detach(), eh.detach(), xi.grad))
    for a, b in zip(*out):
        assert (a - b).abs().max().item() <= 1e-6 * max(1.0, a.abs().max().item())
    # the same edges in the same order: the same arithmetic
    r_src, r_dst = radius.build_edges(x, batch, n)
    f_src, f_dst = fully_connected_edges(batch, n)
    assert torch.equal(r_src, f_src) and torch.equal(r_dst, f_dst)


def test_fused_radius_graph_matches_plain_ops_with_isolated_atoms():
    x, h, t, batch, n = _molecules((40, 25))
    x[0] += 100.0  # an atom with no neighbour within the cutoff
    fused, plain = _model(edges="radius", cutoff=4.0), _model(edges="radius", cutoff=4.0, fused=False)
    src, dst = fused.build_edges(x, batch, n)
    assert not (dst == 0).any()
    grads = []
    for model in (fused, plain):
        xi = x.clone().requires_grad_(True)
        ex, eh = model(xi, h, t, batch, n)
        (ex.square().sum() + eh.sum()).backward()
        grads.append((ex.detach(), eh.detach(), xi.grad, [p.grad.clone() for p in model.parameters()]))
    (a_x, a_h, a_g, a_p), (b_x, b_h, b_g, b_p) = grads
    assert (a_x - b_x).abs().max() < 1e-10 and (a_h - b_h).abs().max() < 1e-10 and (a_g - b_g).abs().max() < 1e-9
    assert all((p - q).abs().max() < 1e-9 * max(1.0, q.abs().max().item()) for p, q in zip(a_p, b_p))
