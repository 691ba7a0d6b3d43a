"""``DiffusionModel``: the one object that owns a trained model. It loads the checkpoints training
writes (and the shipped one), samples the same molecules as the sampling job, converts them for
RDKit and ASE, saves and reloads exactly, and converts any prediction target to epsilon."""

import torch

from moldiff.data.elements import QM9_VOCAB
from moldiff.io.convert import to_ase, to_rdkit
from moldiff.model.checkpoint import SHIPPED
from moldiff.model.diffusion import DiffusionModel
from moldiff.sampling.base import sizes_to_batch
from moldiff.sampling.generate import generate
from moldiff.sampling.samplers import with_recommended


def _inputs(model, sizes=(4, 6), seed=0):
    batch, n = sizes_to_batch(list(sizes))
    g = torch.Generator().manual_seed(seed)
    return model.sde.prior(batch, n, model.layout.dim, torch.float32, g), torch.full((n,), 0.4)


def test_training_checkpoint_loads_and_keeps_its_state_dict_names(tiny_diffusion):
    ckpt = torch.load(tiny_diffusion, weights_only=True)
    assert all(k.startswith(("net.", "ema.")) for k in ckpt["state_dict"])  # the DiffusionModel's own names
    model = DiffusionModel.load(tiny_diffusion)
    assert not model.training and model.size_histogram == {int(k): int(v) for k, v in ckpt["hyper_parameters"]["size_histogram"].items()}
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][key])


def test_sample_is_the_sampling_jobs_molecules(tiny_diffusion):
    model = DiffusionModel.load(tiny_diffusion)
    mols = model.sample(6, steps=4, seed=3, batch_size=4)
    ref = generate(model, 6, steps=4, seed=3, batch_size=4, progress=False, **with_recommended("ancestral"))
    assert len(mols) == 6
    assert (mols.numbers == ref.numbers).all() and (mols.positions == ref.positions).all()
    rdkit_mols, atoms = to_rdkit(mols, vocab=QM9_VOCAB), to_ase(mols)
    assert [m.GetNumAtoms() for m in rdkit_mols] == list(mols.n_atoms) == [len(a) for a in atoms]
    assert (atoms[0].get_positions() == mols[0][1]).all()


def test_save_and_load_round_trip(tiny_diffusion, tmp_path):
    model = DiffusionModel.load(tiny_diffusion)
    path = model.save(tmp_path / "copy.ckpt")
    again = DiffusionModel.load(path)
    state, t = _inputs(model)
    with torch.no_grad():
        a, b = model.eps_fn()(state, t), again.eps_fn()(state, t)
    assert torch.equal(a["pos"], b["pos"]) and torch.equal(a["atom_type"], b["atom_type"])
    assert again.config == model.config


def test_denoise_inverts_the_forward_process_for_the_exact_noise(tiny_diffusion):
    """denoise() is x0 = (z_t - sigma_t eps_hat) / alpha_t: with the network's own eps it must
    give back the z_0 that, noised with that eps, makes z_t."""
    model = DiffusionModel.load(tiny_diffusion)
    state, t = _inputs(model)
    x, h, batch = state.pos, state.atom_type, state.batch
    with torch.no_grad():
        ex, eh = model.eps_fn()(state, t).values()
        clean = model.denoise(state, t)
        x0, h0 = clean.pos, clean.atom_type
    a, s = model.sde.alpha(t, batch), model.sde.sigma(t, batch)
    assert torch.allclose(a * x0 + s * ex, x, atol=1e-5) and torch.allclose(a * h0 + s * eh, h, atol=1e-5)


def test_prediction_target_is_converted_to_epsilon(tiny_diffusion):
    """With noise.prediction=x0 the same network output is read as a clean-molecule estimate."""
    hp = torch.load(tiny_diffusion, weights_only=True)["hyper_parameters"]
    eps_model = DiffusionModel(hp["model"], hp["noise"], hp["features"], hp["size_histogram"], ema_decay=0)
    x0_model = DiffusionModel(hp["model"], {**hp["noise"], "prediction": "x0"}, hp["features"], hp["size_histogram"], ema_decay=0)
    x0_model.load_state_dict(eps_model.state_dict())
    state, t = _inputs(eps_model)
    with torch.no_grad():
        out = eps_model.eps_fn()(state, t)
        ex, eh = x0_model.eps_fn()(state, t).values()
    rx, rh = eps_model.sde.eps_from_x0(state, out, t).values()
    assert torch.equal(ex, rx) and torch.equal(eh, rh)


def test_shipped_model_loads():
    model = DiffusionModel.load("shipped")
    assert model.layout.vocab.name == "qm9" and sum(model.size_histogram.values()) == 100_000  # QM9 train (EDM split)
    assert DiffusionModel.load(SHIPPED).config == model.config


def test_to_rdkit_perceives_with_the_given_or_searched_charge(tmp_path):
    """bonds="perceive" uses an SDF's total charge (the ammonium phosphonate is +1) and searches
    it where none is given (XYZ)."""
    import gzip
    import shutil
    from pathlib import Path

    from rdkit import Chem

    from moldiff.data.report import InputReport
    from moldiff.data.user import read_molecules
    from moldiff.io.writers import write_xyz

    sdf = tmp_path / "geom.sdf"
    with gzip.open(Path(__file__).parent / "data" / "geom_drugs_503_conformers.sdf.gz") as src, open(sdf, "wb") as dst:
        shutil.copyfileobj(src, dst)
    mols, _ = read_molecules(sdf, InputReport())
    one = mols.subset([300])
    assert one.properties["charge"][0] == 1
    write_xyz(tmp_path / "one.xyz", one, ["x"])
    from_xyz, _ = read_molecules(tmp_path / "one.xyz", InputReport())
    for m in (one, from_xyz):
        mol = to_rdkit(m, bonds="perceive")[0]
        assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == "[NH3+]CCCP(=O)(O)CCc1ccccc1"


def test_loading_a_model_tunes_the_cpu_allocator_once_like_the_scripts():
    """The Python API ran up to 4x slower than sample.py, which tuned the allocator and the API did
    not: loading a CPU model applies the same settings, once, in a fresh process."""
    import os
    import subprocess
    import sys

    code = ("import os; from moldiff.nn import cpu_tuning as c; from moldiff.model.diffusion import DiffusionModel; "
            "assert not c.tuned(); DiffusionModel.load('shipped'); "
            "print(c.tuned(), os.environ['DNNL_PRIMITIVE_CACHE_CAPACITY'])")
    env = {k: v for k, v in os.environ.items() if k not in ("DNNL_PRIMITIVE_CACHE_CAPACITY", "MOLDIFF_CPU_TUNING")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "64"]
    off = subprocess.run([sys.executable, "-c", code.replace("print(c.tuned(), os.environ['DNNL_PRIMITIVE_CACHE_CAPACITY'])",
                                                             "print(c.tuned())")],
                         env={**env, "MOLDIFF_CPU_TUNING": "0"}, capture_output=True, text=True, timeout=300)
    assert off.stdout.split() == ["False"]


def test_sample_takes_one_atom_count_for_all_like_the_command_line(tiny_diffusion):
    """Issue 32: model.sample(4, sizes=12) raised "len() of a 0-d tensor"."""
    model = DiffusionModel.load(tiny_diffusion)
    mols = model.sample(3, steps=2, sizes=12, progress=False)
    assert list(mols.n_atoms) == [12, 12, 12]


def test_sample_says_what_it_is_doing_in_one_line_unless_asked_otherwise(tiny_diffusion, capsys):
    """Issue 32: the Python API ran ~5 minutes without a word."""
    model = DiffusionModel.load(tiny_diffusion)
    model.sample(2, steps=2, sizes=[5, 6])
    err = capsys.readouterr().err
    assert err.startswith("sampling 2 molecules (ancestral, 2 steps, cpu; progress=True for a bar) ... ") and err.endswith(" s\n")
    assert err.count("\n") == 1
    model.sample(2, steps=2, sizes=[5, 6], progress=False)
    assert capsys.readouterr().err == ""
