"""The QM9 checkpoint inside the package: present, small, self-describing, and sampled by
``scripts/sample.py`` with no arguments but n (offline)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moldiff.model.checkpoint import SHIPPED

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_checkpoint_is_small_and_describes_its_training():
    assert SHIPPED.is_file() and SHIPPED.stat().st_size < 8e6
    ckpt = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["model"]["name"] == "egnn" and hp["dataset"] == "qm9" and hp["features"]["vocabulary"] == "qm9"
    assert "optimizer_states" not in ckpt
    record = ckpt["moldiff_record"]
    assert record and sum(r["seconds"] for r in record) > 3600 and record[-1]["last_step"] == ckpt["global_step"]


def test_sample_py_uses_the_shipped_model_by_default(tmp_path):
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sample.py"), "n=6", "steps=5", f"output={tmp_path}", f"hydra.run.dir={tmp_path}/hydra",
         "evaluation.reference=null", "evaluation.novelty=null", "evaluation.workers=1"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("samples.sdf", "samples.xyz", "samples.png", "metrics.json"):
        assert (tmp_path / name).is_file()


def _shipped_property_model(role):
    from moldiff.model.checkpoint import SHIPPED_PROPERTY
    from moldiff.model.property import PropertyModel

    path = SHIPPED_PROPERTY[role]
    assert path.is_file() and path.stat().st_size < 6e6
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # plain data only: nothing in it runs
    assert "optimizer_states" not in ckpt and ckpt["hyper_parameters"]["role"] == role
    assert sum(r["seconds"] for r in ckpt["moldiff_record"]) > 1800  # its training record travels with it
    assert ckpt["moldiff_compact"]["network"] == "weights"  # matrices in float16, vectors in float32
    return PropertyModel.load("shipped", role=role)


# The shipped evaluator's MAE on the first 1000 QM9 test molecules (benchmarks/property_models.py
# measures all 13,831; docs/guidance.md). A retrained or damaged model moves these.
EVALUATOR_MAE_1000 = {"alpha": 0.2752, "gap": 0.08444, "homo": 0.05498, "lumo": 0.06782, "mu": 0.08223, "Cv": 0.11732}


def test_shipped_property_models_predict_the_six_properties_as_documented():
    import numpy as np

    from moldiff.data.qm9 import QM9_TARGETS, load_qm9
    from moldiff.data.loader import MoleculeDataset

    evaluator, guide = _shipped_property_model("evaluator"), _shipped_property_model("guide")
    assert evaluator.targets == guide.targets == list(QM9_TARGETS)
    batch = MoleculeDataset(load_qm9("test").subset(range(1000)), evaluator.layout, evaluator.targets)[np.arange(1000)]
    with torch.no_grad():  # one pass for all six columns
        pred = evaluator.net.predict(batch.x, batch.h, torch.zeros(batch.n_mol), batch.batch, batch.n_mol)
    mae = (pred - batch.y.view(batch.n_mol, -1)).abs().mean(0)
    for prop in QM9_TARGETS:
        assert float(mae[evaluator.column(prop)]) == pytest.approx(EVALUATOR_MAE_1000[prop], rel=1e-3), prop


def test_same_molecules_at_the_same_seed_as_before_the_molecule_state(plain_linear):
    """The shipped model through every sampler gives, at the same seed, the molecules it gave
    before the samplers took the molecule state and the per-step hook (commit bbe4e4e; written by
    DiffusionModel.load("shipped").sample(3, sampler=..., steps=4, seed=7, sizes=[9, 12, 15]))."""
    import json
    from pathlib import Path

    import numpy as np

    from moldiff.model.diffusion import DiffusionModel

    golden = json.loads((Path(__file__).parent / "data" / "shipped_samples_bbe4e4e.json").read_text())
    model = DiffusionModel.load("shipped")
    for sampler, ref in golden.items():
        mols = model.sample(3, sampler=sampler, steps=4, seed=7, sizes=[9, 12, 15])
        assert mols.numbers.tolist() == ref["numbers"], sampler
        assert np.abs(mols.positions - np.array(ref["positions"])).max() < 2e-5, sampler


def test_onednn_sampling_gives_the_same_molecules(monkeypatch):
    """Sampling's oneDNN products change only the summation order: at 100 steps the shipped model
    gives the same elements and positions within 1e-4 A as with F.linear (a 4-step sampler
    amplifies the 1e-7 relative difference, hence ``plain_linear`` in the golden test above)."""
    import numpy as np

    from moldiff.model.diffusion import DiffusionModel
    from moldiff.nn import egnn_kernels

    model = DiffusionModel.load("shipped")
    fast = model.sample(3, steps=100, seed=7, sizes=[9, 12, 15])
    monkeypatch.setattr(egnn_kernels, "ONEDNN", False)
    plain = model.sample(3, steps=100, seed=7, sizes=[9, 12, 15])
    assert fast.numbers.tolist() == plain.numbers.tolist()
    assert np.abs(fast.positions - plain.positions).max() < 1e-4


@pytest.mark.parametrize("role", ["guide", "evaluator"])
def test_shipped_property_models_load_the_same_without_lightning(role, qm9_test):
    """``PropertyModel.load`` (safe loading, no Lightning) and the training module's
    ``load_from_checkpoint`` read the shipped files into the same weights and predictions."""
    import numpy as np

    from moldiff.data.loader import MoleculeDataset
    from moldiff.model.checkpoint import SHIPPED_PROPERTY
    from moldiff.model.property import PropertyModel
    from moldiff.train.property_module import PropertyModule

    plain = PropertyModel.load("shipped", role=role)
    assert not plain.training and plain.role == role
    lightning = PropertyModule.load_from_checkpoint(SHIPPED_PROPERTY[role], map_location="cpu", weights_only=True).eval()
    ours, theirs = plain.state_dict(), lightning.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    batch = MoleculeDataset(qm9_test.subset(range(50)), plain.layout)[np.arange(50)]
    t = torch.full((50,), 0.3 if role == "guide" else 0.0)
    with torch.no_grad():
        a = plain.predict(batch.x, batch.h, t, batch.batch, 50)
        b = lightning.net.predict(batch.x, batch.h, t, batch.batch, 50)
    assert a.shape == (50, 6) and torch.equal(a, b)
    with pytest.raises(ValueError, match="role"):
        PropertyModel.load("shipped")  # one shipped model per role
    other = "evaluator" if role == "guide" else "guide"
    with pytest.raises(ValueError, match=f"not a {other}"):
        PropertyModel.load(SHIPPED_PROPERTY[role], role=other)


def test_models_load_with_no_lightning_import():
    code = ("import sys; from moldiff.model.property import PropertyModel; from moldiff.model.diffusion import DiffusionModel; "
            "PropertyModel.load('shipped', role='guide'); PropertyModel.load('shipped', role='evaluator'); DiffusionModel.load('shipped'); "
            "print(sorted(m for m in sys.modules if 'lightning' in m))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == "[]"


def test_shipped_bond_model_writes_its_own_valid_graphs():
    """``ckpt=qm9-bonds`` loads by name and, at its defaults, writes bonds and formal charges whose
    graphs are mostly valid (docs/bonds.md: 90.0 % of 1000; here 50 at seed 0)."""
    from moldiff.metrics.graph import graph_metrics
    from moldiff.model.bond_model import BondDiffusionModel

    model = BondDiffusionModel.load("qm9-bonds")
    mols = model.sample(50, seed=0)
    assert mols.has_bonds and mols.charges is not None
    assert graph_metrics(mols)["valid"] >= 0.7
