"""Writing SDF and XYZ atomically (readers of users' files live in ``moldiff.data.user``)."""

from moldiff.io.writers import atomic_write, write_sdf, write_xyz

__all__ = ["atomic_write", "write_sdf", "write_xyz"]
