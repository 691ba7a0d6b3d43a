"""From 3D coordinates to bonds to RDKit molecules, by two protocols.

* ``edm``: EDM's distance-table bond orders, reproduced exactly (``edm_bonds.py``, ``edm_rdkit.py``).
* ``corrected``: RDKit's ``rdDetermineBonds`` with formal charges (``determine_bonds.py``).
"""
