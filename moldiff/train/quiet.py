"""Third-party output a training run does not need: Lightning's advertisement and two warnings
known to be harmless here (issue 32). Everything else Lightning and torch say still shows."""

from __future__ import annotations

import logging
import warnings

HARMLESS_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # torch's deprecation, raised inside Lightning's own pytree code
    r"Precision bf16-mixed is not supported by the model summary",  # only the summary's size estimate (printed in fp32 terms)
)
RANK_ZERO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")


class _NoAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip")  # "try installing litlogger ..."


def quiet_third_party() -> None:
    """Drop the advertisement and the known-harmless warnings for the rest of the process (idempotent)."""
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdvertisements) for f in logger.filters):
            logger.addFilter(_NoAdvertisements())
