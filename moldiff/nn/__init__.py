"""Equivariant networks predicting epsilon for positions (E(3)-equivariant, zero CoM) and
features (invariant): EGNN (``egnn.py``) and an e3nn tensor-product network (``e3nn_net.py``)."""
