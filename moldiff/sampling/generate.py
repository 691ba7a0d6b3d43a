"""Molecules from a trained model: atom counts, batched sampling, decoding to a ``MoleculeSet``.

``generate(module, n, ...)`` draws atom counts from the model's training histogram (or takes
``sizes``), samples in batches of ``batch_size`` molecules with any sampler, and decodes atom
types by argmax. Batch k uses a generator seeded by (seed, k): the same seed and batch size give
the same molecules. With ``batch_atoms`` / ``batch_edges`` the molecules, in the same drawn order,
are cut into batches of at most that many atoms / full-graph edges sum N (N - 1) instead
(``moldiff.data.loader.pack_batches``; a molecule over a bound alone), so GEOM-size molecules keep
memory bounded; the same seed and bounds give the same molecules.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from moldiff.data.fragment import parse_n_atoms
from moldiff.data.loader import pack_batches
from moldiff.data.molecules import MoleculeSet
from moldiff.sampling.base import sample_sizes
from moldiff.sampling.samplers import sample
from moldiff.nn.context import ContextSlot
from moldiff.sampling.ancestral import ancestral_step
from moldiff.sampling.inpaint import RECONSTRUCTION, check_fragment, fragment_inpaint
from moldiff.state import MolState

PRECISIONS = ("32", "bf16-mixed")


def generate(
    module,
    n: int,
    sampler: str = "ancestral",
    steps: int = 100,
    batch_size: int = 250,
    seed: int = 0,
    device="cpu",
    sizes=None,
    ema: bool = True,
    progress: bool = True,
    on_batch=None,
    done: dict | None = None,
    eps_fn=None,
    before_batch=None,
    context=None,
    precision: str = "32",
    batch_atoms: int | None = None,
    batch_edges: int | None = None,
    callback=None,
    n_atoms=None,
    fragment: MoleculeSet | None = None,
    resample: int = 1,
    reconstruction: float | None = RECONSTRUCTION,
    **options,
) -> MoleculeSet:
    """``n`` molecules. ``on_batch(k, MoleculeSet)`` is called after each finished batch;
    ``done`` maps batch numbers to batches finished by an interrupted run (not sampled again).
    ``eps_fn`` replaces the module's (e.g. a guided one); ``before_batch(k, first, last)`` is
    called before sampling molecules first..last-1 (to set per-molecule targets of guidance).
    ``context``: a conditional model's targets for all ``n`` molecules, (n,) or (n, K) (with a
    custom ``eps_fn``, build it on a ``ContextSlot`` and set the slot in ``before_batch``).
    ``precision``: "32", or "bf16-mixed" to run the network's per-edge MLPs in bfloat16 (as in
    training with Lightning's precision flag); the sampler's arithmetic stays in float32.
    ``batch_atoms`` / ``batch_edges``: bound each batch by atoms / edges instead of ``batch_size``.
    ``callback``: the samplers' per-step hook (``sampling.base.after_step``), batch by batch.
    The sampler runs in its exact form with ``options`` as given: user-facing entry points add
    ``RECOMMENDED_OPTIONS`` themselves (``DiffusionModel.sample``, ``scripts/sample.py``).
    ``n_atoms``: a count or a range "a-b" (``sizes_for``), instead of ``sizes``.
    ``fragment``: a one-molecule ``MoleculeSet`` (``moldiff.data.fragment.load_fragment``) whose
    atoms every molecule keeps exactly, in the file's frame, as its first atoms (``sampling.inpaint``;
    stochastic samplers only); the result's ``fixed`` marks them. ``resample``: RePaint's
    resampling, each ancestral step redone that many times; ``reconstruction``: the weight of
    reconstruction guidance towards the fragment (0: plain replacement; None: the default;
    ``sampling.inpaint``)."""
    if str(precision) not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if isinstance(sizes, (int, np.integer)) and not isinstance(sizes, bool):
        sizes = [int(sizes)] * n  # one atom count for all, as scripts/sample.py takes sizes=12
    reconstruction = RECONSTRUCTION if reconstruction is None else float(reconstruction)
    k = check_fragment(fragment, sampler, callback, resample, reconstruction)
    if sizes is not None and n_atoms is not None:
        raise ValueError("give sizes or n_atoms, not both")
    if sizes is None:
        sizes = sizes_for(n_atoms, n, module.size_histogram, seed, k)
    else:
        warn_untrained_sizes(sizes, module.size_histogram)
    sizes = torch.as_tensor(sizes, dtype=torch.long)
    if len(sizes) != n or (sizes < 1).any():
        raise ValueError(f"need {n} positive atom counts, got {len(sizes)} (min {int(sizes.min()) if len(sizes) else None})")
    slot = None
    if context is not None:
        if eps_fn is not None:
            raise ValueError("with a custom eps_fn, pass the targets through its ContextSlot, not context=")
        context = torch.as_tensor(context)
        if len(context) != n:
            raise ValueError(f"context: need targets for {n} molecules, got {len(context)}")
        slot = ContextSlot()
    eps_fn = eps_fn if eps_fn is not None else module.eps_fn(ema=ema, context=slot)
    options.setdefault("t_max", getattr(module, "horizon", 1.0))
    layout = module.layout
    parts = []
    if batch_atoms is None and batch_edges is None:
        chunks = list(torch.split(sizes, batch_size))
    else:
        cuts = pack_batches(sizes.numpy(), batch_atoms, batch_edges)
        chunks = [sizes[a:b] for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist())]
    bar = _progress(len(chunks), n, progress)
    starts = np.cumsum([0] + [len(c) for c in chunks])
    device_type = torch.device(device).type
    with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=str(precision) == "bf16-mixed"):
        for k, chunk in enumerate(chunks):
            if done and k in done:
                parts.append(done[k])
            else:
                if slot is not None:
                    slot.values = context[int(starts[k]) : int(starts[k + 1])].to(device)
                if before_batch is not None:
                    before_batch(k, int(starts[k]), int(starts[k + 1]))
                g = torch.Generator(device=device).manual_seed(int(seed) * 100_003 + k)
                inpaint = None
                if fragment is not None:
                    restep = None
                    if resample > 1:
                        def restep(state, t, s, g=g):
                            return ancestral_step(eps_fn, module.sde, state, t, s, g, **{
                                k_: v for k_, v in options.items() if k_ in ("late_noise", "late_t")})
                    def estimate(state, t):  # the clean positions, differentiable: reconstruction guidance
                        return module.sde.x0_from_eps(state, eps_fn(state, t), t).pos

                    inpaint = fragment_inpaint(module.sde, fragment, chunk.to(device), g, features=layout.encode_numbers(fragment.numbers),
                                               resample=resample, restep=restep, reconstruction=reconstruction, estimate=estimate)
                state = sample(sampler, eps_fn, module.sde, chunk.to(device), layout.dim, steps=steps, generator=g,
                               callback=inpaint or callback, **options)
                if inpaint is not None:
                    state = inpaint.finish(state)
                parts.append(_decode(state, chunk, layout))
                if on_batch is not None:
                    on_batch(k, parts[-1])
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return MoleculeSet.concatenate(parts)


def sizes_for(n_atoms, n: int, histogram: dict[int, int], seed: int = 0, fragment_atoms: int = 0) -> torch.Tensor:
    """(n,) atom counts: ``n_atoms`` a count K or a range "a-b" (drawn from the training histogram
    restricted to it, uniformly where it has none there), or None (the histogram; with a fragment of
    k atoms, its sizes above k). A fragment larger than the count asked for is an error; counts
    the model never trained on are a warning with their number (``warn_untrained_sizes``)."""
    g = torch.Generator().manual_seed(int(seed))
    if n_atoms is None:
        if not fragment_atoms:
            return sample_sizes(histogram, n, g)
        lo, hi = fragment_atoms + 1, max(max(histogram), fragment_atoms + 1)
    else:
        lo, hi = parse_n_atoms(n_atoms)
        if fragment_atoms > lo:
            raise ValueError(f"n_atoms={n_atoms}: the fragment has {fragment_atoms} atoms, more than {lo}")
    restricted = {k: v for k, v in histogram.items() if lo <= int(k) <= hi and v > 0} or {k: 1 for k in range(lo, hi + 1)}
    sizes = sample_sizes(restricted, n, g)
    warn_untrained_sizes(sizes, histogram)
    return sizes


def warn_untrained_sizes(sizes, histogram: dict[int, int]) -> None:
    """Warn when requested atom counts had no training molecule: they are not refused, but what
    the model makes of them is extrapolation and their figures can be absurd (docs/sampling.md)."""
    trained = {int(k) for k, v in histogram.items() if v > 0}
    requested = torch.as_tensor(sizes).flatten().tolist()
    outside = sorted({int(s) for s in requested} - trained)
    if not outside or not trained:
        return
    lo, hi = min(trained), max(trained)
    gaps = sorted(set(range(lo, hi + 1)) - trained)
    warnings.warn(
        f"{sum(int(s) in outside for s in requested)} of {len(requested)} requested atom counts are outside the model's "
        f"training histogram ({', '.join(map(str, outside[:10]))}{', ...' if len(outside) > 10 else ''}; it has {lo}-{hi} atoms"
        + (f", none with {', '.join(map(str, gaps))}" if gaps else "")
        + "): their molecules and metrics are not comparable to the model's (EDM validity counts a cloud of "
        "H2 fragments as valid; docs/sampling.md)",
        stacklevel=3,
    )


def _decode(state: MolState, sizes, layout) -> MoleculeSet:
    """Elements by argmax of the continuous type features, positions as sampled, the fixed atoms' marks."""
    numbers = layout.decode_numbers(state.atom_type)
    offsets = np.concatenate([[0], np.cumsum(sizes.cpu().numpy())])
    fixed = state.fixed
    return MoleculeSet(numbers, state.pos.float().cpu().numpy(), offsets, fixed=None if fixed is None else fixed.cpu().numpy())


def _progress(batches, n, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=n, unit="mol", desc="sampling")
