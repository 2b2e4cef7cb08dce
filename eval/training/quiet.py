"""Lightning's start-up lines that say nothing about the run are dropped where they are logged.

Every ``pl.Trainer`` logs "GPU available: False, used: False", "TPU available: ..." (and HPU)
and, without litlogger installed, an advertisement for it, through the logger
``pytorch_lightning.utilities.rank_zero`` (and, for every method with a schedule, that it loads
the training data to count the steps). A comparison of six methods printed them six times.
:func:`quiet_lightning` adds a filter to that logger for exactly these lines; everything else
Lightning logs (warnings, "Time limit reached", errors) still shows.
"""

from __future__ import annotations

import logging

__all__ = ["QUIET_PREFIXES", "quiet_lightning"]

#: Messages that start with one of these are not shown.
QUIET_PREFIXES = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "💡 Tip:",
    # Said whenever a cosine schedule asks for the run's length: an implementation detail.
    "Loading `train_dataloader` to estimate number of stepping batches",
)
LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")


class _DropStartupLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(QUIET_PREFIXES)


_FILTER = _DropStartupLines()


def quiet_lightning() -> None:
    """Drops Lightning's accelerator lines and tips (idempotent)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
