"""Lightning's start-up messages that say nothing about a run, silenced one by one (nothing else is hidden).

- The "💡 Tip" advertisements (litlogger, litmodels). Lightning logs them at INFO through its rank-zero
  loggers, which also carry the lines worth reading (devices, the data and anchor-fit lines of a run), so a
  logging filter drops only the records that start with the tip marker; Lightning 2.6 has no switch for them.
- The FutureWarning torch raises when Lightning 2.6 builds a ``LeafSpec`` (``isinstance(treespec, LeafSpec)``
  is deprecated): Lightning's own code, nothing a user can change, ignored by its message.
"""

from __future__ import annotations

import logging
import warnings

TIP_MARKER = "💡 Tip:"
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
LEAF_SPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_MARKER)


def quiet_lightning() -> None:
    """Install both filters (once, however often it is called)."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=LEAF_SPEC_WARNING, category=FutureWarning)
