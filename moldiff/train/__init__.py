"""Training on Lightning: what to build from a config (``build.py``), the LightningModule
(``module.py``), callbacks (``callbacks.py``) and the job behind ``scripts/train.py`` (``run.py``).
Nothing here imports RDKit: the periodic evaluation imports it lazily and is skipped without it."""
