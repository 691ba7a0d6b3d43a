"""Every ``python scripts/...`` command in the README and docs works as written: each composes
with its Hydra config and passes its job's checks (a missing key, a struct error or a bad value
fails here), and the cheap ones run, shrunk to tiny sizes. Commands that name files the reader
makes first (a checkpoint, an SDF) get stand-ins; ones that need a GPU are only composed."""

import re
import shlex
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from moldiff.jobs import evaluate, guide, likelihood, refine_bridge, sample, train, train_property

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CHECKS = {"sample": sample.check_config, "train": train.check_config, "evaluate": evaluate.check_config,
          "likelihood": likelihood.check_config, "guide": guide.check_config, "refine_bridge": refine_bridge.check_config,
          "train_property": train_property.check_config}
# documented commands that cannot work on a fresh clone yet, with the issue that fixes them, as
# {(script, key): (reason, expected error)}; an entry whose command starts working fails below, so
# this list only shrinks
KNOWN_BROKEN: dict = {}


def documented_commands():
    """(where, script, overrides) of every ``python scripts/<job>.py ...`` in a fenced block or in
    inline code, comments and line continuations handled."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        spans, block, prose = [], None, []
        for line in text.splitlines():
            if line.startswith("```"):
                if block is None:
                    block = [] if line[3:].strip() in ("", "bash", "sh", "shell") else False
                else:
                    if block is not False:
                        spans.append("\n".join(block))
                    block = None
            elif block is None:
                prose.append(line)
            elif block is not False:
                block.append(line)
        spans += [m.group(1) for m in re.finditer(r"`(python [^`]+)`", "\n".join(prose).replace("\n", " "))]
        for span in spans:
            for line in span.replace("\\\n", " ").splitlines():
                m = re.search(r"python (scripts/(\w+)\.py)(.*)", line)
                if m and m.group(2) in CHECKS:
                    args = shlex.split(m.group(3), comments=True)
                    found.append((f"{doc.name}: {m.group(0).split('#')[0].strip()}", m.group(2), args))
    return sorted(set((w, s, tuple(a)) for w, s, a in found))


COMMANDS = documented_commands()


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, tiny_diffusion):
    """Files the docs tell readers to make first: a checkpoint, samples as SDF and XYZ, a .npz cache."""
    from moldiff.data.qm9 import load_qm9
    from moldiff.io.convert import to_rdkit
    from moldiff.io.writers import write_sdf, write_xyz

    tmp = tmp_path_factory.mktemp("docs")
    mols = load_qm9("test").subset(range(3))
    write_sdf(tmp / "samples.sdf", to_rdkit(mols), ["a", "b", "c"])
    write_xyz(tmp / "out.xyz", mols, ["a", "b", "c"])
    mols.save(tmp / "mols.npz")  # a cache in the GEOM reader's format (a built dataset, saved samples)
    return {"ckpt": str(tiny_diffusion), "sdf": str(tmp / "samples.sdf"), "xyz": str(tmp / "out.xyz"), "npz": str(tmp / "mols.npz"), "tmp": tmp}


def _substitute(args, files):
    out = []
    for a in args:
        key, _, value = a.partition("=")
        if key == "ckpt" and value != "shipped":
            a = f"ckpt={files['ckpt']}"
        elif key in ("input",) and value.endswith(".sdf"):
            a = f"input={files['sdf']}"
        elif key in ("input",) and value.endswith(".xyz"):
            a = f"input={files['xyz']}"
        elif key in ("input",) and value.startswith("geom:") and value.endswith(".npz"):
            a = f"input=geom:{files['npz']}"
        elif key in ("dataset.train", "dataset.val") and value.endswith(".sdf"):
            a = f"{key}={files['sdf']}"
        elif key == "output":
            a = f"output={files['tmp'] / Path(value).name}"
        out.append(a)
    return out


def _needs_gpu(args):
    return any(a.startswith(("device=cuda", "trainer=gpu")) for a in args) and not torch.cuda.is_available()


def _compose(script, args):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose(script, list(args))


def test_the_docs_hold_commands_of_every_job():
    assert {s for _, s, _ in COMMANDS} == set(CHECKS), "a job lost its documented command, or the collector broke"
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("where,script,args", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_documented_command_composes_and_passes_its_checks(where, script, args, stand_ins):
    args = _substitute(args, stand_ins)
    cfg = _compose(script, args)  # unknown keys, struct errors and bad overrides fail here
    if _needs_gpu(args):
        return
    broken = next((v for (s, key), v in KNOWN_BROKEN.items() if s == script and any(a.startswith(key + "=") for a in args)
                   and not any(a.startswith(f"{key}=null") for a in args)), None)
    if broken is not None:
        reason, message = broken
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            CHECKS[script](cfg)
        return
    CHECKS[script](cfg)


# the commands that run in seconds once shrunk (model size and data stay as written)
SHRINK = {
    "sample": ["n=2", "steps=2", "batch_size=2", "evaluation=null"],
    "evaluate": ["reference=null", "novelty=null", "workers=1", "posebusters=0", "xtb=0", "revisited_xtb=0"],
    "likelihood": ["n=2", "batch_size=2", "elbo.timesteps=2", "ode.rtol=1e-2", "ode.atol=1e-2", "ode.probes=1"],
    "guide": ["n=2", "steps=2", "batch_size=2", "evaluation=null", "xtb.workers=1"],  # the shipped guide and evaluator
}
SLOW = ("ode.divergence=exact", "input=qm9")
CHEAP = [c for c in COMMANDS if c[1] in SHRINK and not any(a.startswith(SLOW) or (c[1] == "sample" and a.startswith("target=")) for a in c[2])]


@pytest.mark.parametrize("where,script,args", CHEAP, ids=[c[0] for c in CHEAP])
def test_cheap_documented_command_runs(where, script, args, stand_ins, tmp_path):
    args = _substitute(args, stand_ins)
    if _needs_gpu(args):
        pytest.skip("needs a GPU")
    shrink = SHRINK[script] + ([] if any(a.startswith("output=") for a in args) else [f"output={tmp_path / 'out'}"])
    keys = {a.split("=")[0] for a in shrink}
    cfg = _compose(script, [a for a in args if a.split("=")[0] not in keys] + shrink)
    run = {"sample": sample.run_sampling, "evaluate": evaluate.run_evaluation, "likelihood": likelihood.run_likelihood,
           "guide": guide.run_guidance}[script]
    run(cfg, tmp_path)


OWN_SDF = [c for c in COMMANDS if c[1] == "train" and any(a.startswith("dataset.train=") and a.endswith(".sdf") for a in c[2])]


@pytest.mark.parametrize("where,script,args", OWN_SDF, ids=[c[0] for c in OWN_SDF])
def test_documented_training_on_your_own_sdf_runs(where, script, args, stand_ins, tmp_path):
    """Issue 32: training on one's own SDF worked but was not documented."""
    args = _substitute(args, stand_ins)
    shrink = ["batch_size=2", "trainer.max_steps=2", "trainer.enable_progress_bar=false", "logs=[]", "evaluate.every_n_epochs=0",
              f"checkpoint.dir={tmp_path / 'ckpt'}"]
    keys = {a.split("=")[0] for a in shrink}
    train.run_training(_compose(script, [a for a in args if a.split("=")[0] not in keys] + shrink), tmp_path)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()


def test_training_on_your_own_sdf_is_documented():
    assert OWN_SDF, "no documented command trains on an SDF of one's own"
