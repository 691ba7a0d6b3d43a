"""``BondDiffusionModel``: a model that generates positions, atom types, formal charges and bonds
together (issue 29), as one object like ``DiffusionModel``.

It holds the network (``BondEGNN``) and its EMA copy, the positions' VP process, one
``CategoricalProcess`` per categorical field (with the training data's class frequencies as
prior), the class vocabularies and the training atom-count histogram, all rebuilt from the plain
``config`` dict a checkpoint stores (safe-loaded: nothing in a file is run).

    model = BondDiffusionModel.load("path/to/bond_model.ckpt")
    mols = model.sample(100, seed=0)          # MoleculeSet with .bonds and .charges
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from moldiff.data.elements import vocabulary
from moldiff.data.molecules import MoleculeSet
from moldiff.data.state_dataset import BOND_CLASSES
from moldiff.model import build
from moldiff.model.checkpoint import read_checkpoint, write_checkpoint
from moldiff.nn.bond_egnn import BondEGNN
from moldiff.noise.categorical import CategoricalProcess
from moldiff.data.fragment import fragment_anchors, load_fragment
from moldiff.sampling.fields import ancestral_step as field_step
from moldiff.sampling.fields import prior_state, sample_fields
from moldiff.sampling.fragment_condition import FragmentCondition
from moldiff.sampling.generate import sizes_for
from moldiff.sampling.inpaint import RECONSTRUCTION, check_fragment, fragment_inpaint
from moldiff.sampling.samplers import with_recommended
from moldiff.state import MolState

KIND = "bonds"  # checkpoints say which model class reads them (``hyper_parameters["kind"]``)
DEFAULT_NU = {"atom_type": 1.0, "charge": 1.0, "bond": 1.5}


def is_bond_checkpoint(ckpt: dict) -> bool:
    """Whether a loaded checkpoint holds a bond model (exported ones say so; training ones carry its marginals)."""
    hp = ckpt.get("hyper_parameters", {})
    return hp.get("kind") == KIND or "marginals" in hp


class BondDiffusionModel(nn.Module):
    def __init__(self, model: dict[str, Any], noise: dict[str, Any], features: dict[str, Any], size_histogram: dict[int, int],
                 marginals: dict[str, list[float]], ema_decay: float = 0.999, **extra):
        super().__init__()
        self.config = {"kind": KIND, "model": model, "noise": noise, "features": features,
                       "size_histogram": {int(k): int(v) for k, v in size_histogram.items()},
                       "marginals": {k: [float(x) for x in v] for k, v in marginals.items()}, "ema_decay": float(ema_decay),
                       **{k: v for k, v in extra.items() if k != "kind"}}
        self.vocab = vocabulary(features["vocabulary"])
        self.charge_values = tuple(int(c) for c in features.get("charges", (-1, 0, 1)))
        nus = {**DEFAULT_NU, **(noise.get("nu") or {})}
        self.processes = {name: CategoricalProcess(marginals[name], nus[name]) for name in ("atom_type", "charge", "bond")}
        sizes = {"atom_type": len(self.vocab), "charge": len(self.charge_values), "bond": len(BOND_CLASSES)}
        for name, process in self.processes.items():
            if process.n_classes != sizes[name]:
                raise ValueError(f"marginals[{name!r}] has {process.n_classes} classes, the model {sizes[name]}")
        self.sde = build.sde({k: v for k, v in noise.items() if k != "nu"})
        self.net = BondEGNN(len(self.vocab), len(self.charge_values), len(BOND_CLASSES),
                            **{k: v for k, v in model.items() if k != "name"})
        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True) if ema_decay > 0 else None
        if self.ema is not None:
            self.ema.requires_grad_(False)

    @property
    def size_histogram(self) -> dict[int, int]:
        return dict(self.config["size_histogram"])

    def network(self, ema: bool = True) -> nn.Module:
        return self.ema.module if (ema and self.ema is not None) else self.net

    def update_ema(self) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.net)

    def denoise_fn(self, ema: bool = True):
        """``denoise(state_t, t) -> {field: clean estimate}``: what the loss and samplers call."""
        return self.network(ema)

    # --- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, steps: int = 100, seed: int = 0, sizes=None, batch_size: int = 250, sampler: str = "ancestral",
               callback=None, ema: bool = True, fragment=None, n_atoms=None, on_batch=None, done: dict | None = None,
               resample: int = 1, reconstruction: float | None = None, anchors="auto", **options) -> MoleculeSet:
        """``n`` molecules with the model's own bonds and formal charges; batch k draws from a
        generator seeded by (seed, k), so the same seed and batch size give the same molecules.
        ``fragment`` (an SDF path or a one-molecule ``MoleculeSet`` with bonds) is kept exactly in
        every molecule, elements, charges, positions and bonds (issue 30); ``n_atoms`` a count or a
        range "a-b"; ``resample`` and ``reconstruction`` as for ``generate`` (None: its default); ``anchors``
        the fragment atoms that may bond to new ones ("auto": those with an open valence, "all", or atom
        indices; ``data/fragment.py``). A model trained with fragments (``model.fragment_condition``)
        is handed the fragment clean at every step instead (``sampling/fragment_condition.py``): no
        replacement, so ``resample`` and ``reconstruction`` do not apply to it. ``on_batch(k, MoleculeSet)`` after each finished batch; ``done`` maps batch
        numbers to batches an interrupted run finished (not sampled again), as ``generate`` does.
        ``options`` go on top of the sampler's recommended ones, as for ``DiffusionModel.sample``
        (ancestral: half the positions' noise for t <= 0.5; ``late_noise=1`` for the exact posterior)."""
        options = with_recommended(sampler, options)
        device = next(self.parameters()).device
        if fragment is not None and not isinstance(fragment, MoleculeSet):
            fragment = load_fragment(fragment, self.vocab)
        conditioned = fragment is not None and self.net.fragment_condition
        reconstruction = self.reconstruction_for(fragment is not None, resample, reconstruction)
        k = check_fragment(fragment, sampler, callback, resample, reconstruction)
        fields = self.fragment_fields(fragment) if fragment is not None else None
        anchor = fragment_anchors(fragment, anchors) if fragment is not None else None
        if sizes is not None and n_atoms is not None:
            raise ValueError("give sizes or n_atoms, not both")
        if sizes is None:
            sizes = sizes_for(n_atoms, n, self.size_histogram, seed, k)
        sizes = torch.as_tensor(sizes, dtype=torch.long).reshape(-1)
        if sizes.numel() == 1 and n > 1:
            sizes = sizes.expand(n)
        if len(sizes) != n or (sizes < 1).any():
            raise ValueError(f"need {n} positive atom counts, got {len(sizes)}")
        was_training = self.training
        self.eval()
        parts = []
        try:
            for b, chunk in enumerate(torch.split(sizes, batch_size)):
                if done and b in done:
                    parts.append(done[b])
                    continue
                g = torch.Generator(device=device).manual_seed(int(seed) * 100_003 + b)
                chunk = chunk.to(device)
                denoise = self.denoise_fn(ema)
                if conditioned:
                    step = FragmentCondition(fragment, chunk, fields, self.processes, anchor, g)
                    init = step.start(prior_state(chunk, self.processes, g, device=device))
                else:
                    restep = (lambda st, t, s, g=g: field_step(denoise, self.sde, self.processes, st, t, s, g, **options)[0]) if resample > 1 else None
                    estimate = lambda st, t, denoise=denoise: denoise(st, t)["pos"]  # noqa: E731 (reconstruction guidance)
                    step = None if fields is None else fragment_inpaint(self.sde, fragment, chunk, g, fields=fields,
                                                                        processes=self.processes, resample=resample, restep=restep,
                                                                        reconstruction=reconstruction, estimate=estimate, anchors=anchor)
                    init = None
                state = sample_fields(sampler, denoise, self.sde, self.processes, chunk, steps=steps, generator=g, device=device,
                                      callback=step or callback, init=init, **options)
                if step is not None:
                    state = step.finish(state)
                parts.append(self.decode(state))
                if on_batch is not None:
                    on_batch(b, parts[-1])
        finally:
            self.train(was_training)
        return MoleculeSet.concatenate(parts)

    def reconstruction_for(self, fragment: bool, resample: int = 1, reconstruction: float | None = None) -> float:
        """The reconstruction guidance weight to sample with (None: the default). A model trained
        with fragments is handed them clean, so neither replacement's resampling nor its guidance
        applies: asking for them is an error, not a silent no-op."""
        if fragment and self.net.fragment_condition:
            if int(resample) > 1 or (reconstruction or 0) > 0:
                raise ValueError("resample, reconstruction: this model was trained with fragments and samples around them "
                                 "without replacement; they apply only to a model without fragment training")
            return 0.0
        return RECONSTRUCTION if reconstruction is None else float(reconstruction)

    def decode(self, state: MolState) -> MoleculeSet:
        """A ``MoleculeSet`` with elements, positions, formal charges and bonds from a sampled state."""
        counts = state.n_atoms.cpu().numpy()
        offsets = np.concatenate([[0], np.cumsum(counts)])
        numbers = self.vocab.numbers[state.atom_type.cpu().numpy()]
        charges = np.asarray(self.charge_values, np.int8)[state.charge.cpu().numpy()]
        bond = state.bond.cpu().numpy()
        present = bond > 0
        pairs = state.pairs.cpu().numpy()[present]
        mol = state.pair_batch.cpu().numpy()[present]
        rows = np.stack([pairs[:, 0] - offsets[mol], pairs[:, 1] - offsets[mol], bond[present]], 1)  # class k = order k
        bond_offsets = np.concatenate([[0], np.cumsum(np.bincount(mol, minlength=state.n_mol))])
        fixed = None if state.fixed is None else state.fixed.cpu().numpy()
        return MoleculeSet(numbers, state.pos.float().cpu().numpy(), offsets, {}, charges, rows, bond_offsets, fixed)

    def fragment_fields(self, fragment: MoleculeSet) -> dict[str, torch.Tensor]:
        """The fragment's clean classes: atom types, formal charges and the (k, k) bond classes."""
        if not fragment.has_bonds or fragment.charges is None:
            raise ValueError("fragment: the bond model keeps the fragment's bonds; give an SDF with bonds (an XYZ has none)")
        numbers, _ = fragment[0]
        types = self.vocab.encode(numbers)
        lookup = {c: i for i, c in enumerate(self.charge_values)}
        bad = sorted(set(fragment.charges.tolist()) - set(lookup))
        if (types < 0).any() or bad:
            raise ValueError(f"fragment: elements or formal charges {bad or ''} outside the model's classes")
        k = len(numbers)
        bond = torch.zeros(k, k, dtype=torch.long)
        i, j, order = (torch.as_tensor(c.astype(np.int64)) for c in fragment.bonds_of(0).T)
        bond[i, j] = bond[j, i] = order  # a class index is its order code
        return {"atom_type": torch.as_tensor(types.astype(np.int64)),
                "charge": torch.as_tensor([lookup[int(q)] for q in fragment.charges_of(0)], dtype=torch.long), "bond": bond}

    # --- files --------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "BondDiffusionModel":
        hp = dict(ckpt["hyper_parameters"])
        if not is_bond_checkpoint(ckpt):
            raise ValueError("this checkpoint holds a coordinates-only model: load it with DiffusionModel.load")
        model = cls(**hp)
        model.load_state_dict(ckpt["state_dict"], strict=True)
        model.record = list(ckpt.get("moldiff_record", []))
        return model

    @classmethod
    def load(cls, path: str | Path, device="cpu") -> "BondDiffusionModel":
        return cls.from_checkpoint(read_checkpoint(path)).to(device).eval()

    def save(self, path: str | Path, record: list | None = None) -> Path:
        return write_checkpoint(path, {"state_dict": self.state_dict(), "hyper_parameters": self.config,
                                       "moldiff_record": list(record if record is not None else getattr(self, "record", []))})
