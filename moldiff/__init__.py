"""moldiff: E(3)-equivariant diffusion for 3D molecules.

The package follows the data's way, from the ground up: ``data`` (molecules as flat arrays) ->
``noise``, ``nn``, ``chem`` -> ``loss``, ``io``, ``metrics`` -> ``guidance``, ``sampling`` ->
``model`` (``DiffusionModel``: the object users load and sample from) -> ``likelihood``,
``bridge``, ``train`` -> ``jobs`` (what ``scripts/`` run). See docs/architecture.md.
"""

__version__ = "0.1.0"
