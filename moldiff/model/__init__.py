"""The model layer: configs to objects (``build.py``), checkpoint files (``checkpoint.py``) and
``DiffusionModel`` (``diffusion.py``), which ties network, EMA, noise process and features together."""
