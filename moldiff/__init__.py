"""moldiff: E(3)-equivariant diffusion for 3D molecules.

The package follows the data's way: ``moldiff.data`` (molecules as flat arrays) ->
``moldiff.chem`` (3D -> bonds -> RDKit) -> ``moldiff.metrics`` (stability, validity,
distributions) -> ``moldiff.io`` (SDF/XYZ writers).
"""

__version__ = "0.1.0"
