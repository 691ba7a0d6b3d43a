"""Training on Lightning: the LightningModule around a ``DiffusionModel`` (``module.py``), callbacks
(``callbacks.py``), the property models' module (``property_module.py``) and checkpoint export
(``export.py``); the job behind ``scripts/train.py`` is ``moldiff.jobs.train``. Nothing here
imports RDKit: the periodic evaluation imports it lazily and is skipped without it."""
