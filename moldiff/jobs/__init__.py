"""The jobs behind ``scripts/``: each checks its config, loads what it needs through the library
and writes its outputs. They sit on top: nothing in the library imports them
(``tests/test_layering.py``)."""
