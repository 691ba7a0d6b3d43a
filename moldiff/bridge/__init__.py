"""Schrödinger-bridge refinement of a pretrained diffusion (issue 7): the VP reference's bridges
(``reference``) and iterative Markovian fitting (``imf``)."""
