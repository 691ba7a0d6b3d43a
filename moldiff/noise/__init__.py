"""The noise process: schedules (``schedules.py``) and the variance-preserving SDE on zero-CoM
positions and atom features (``vp_sde.py``); discrete DDPM is the same process on a grid."""

from moldiff.noise.schedules import CosineSchedule, LinearSchedule, PolynomialSchedule, get_schedule
from moldiff.noise.vp_sde import VPSDE

__all__ = ["VPSDE", "LinearSchedule", "CosineSchedule", "PolynomialSchedule", "get_schedule"]
