"""Training objectives: the weights of the epsilon error over time (``weights.py``), EDM's
reconstruction term L0 (``reconstruction.py``) and the loss that samples times and combines them
(``objective.py``)."""
