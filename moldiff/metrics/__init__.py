"""Metrics for generated molecules: stability, validity, uniqueness, novelty, connectivity,
distribution distances, and optional PoseBusters and GFN2-xTB checks. Entry point: ``evaluate``."""
