"""Reading users' molecules (SDF, XYZ, folders) and writing SDF/XYZ atomically."""

from moldiff.io.readers import read_molecules
from moldiff.io.writers import write_sdf, write_xyz, atomic_write

__all__ = ["read_molecules", "write_sdf", "write_xyz", "atomic_write"]
