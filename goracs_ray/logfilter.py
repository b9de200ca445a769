"""A logging filter for the CLI's quiet logs (referenced by ``ray_data_logging.yaml``)."""

from __future__ import annotations

import logging

__all__ = ["ChosenSettingAdvice"]


class ChosenSettingAdvice(logging.Filter):
    """Drops Ray Data's advice to turn its progress bars on: goracs_ray turns them off where its
    own bar counts the work (features) or where they would print into a log (Ray Train ingest).
    Every other record passes. (Ray Data builds its filters without arguments, hence the fixed
    list.)"""

    PREFIXES = ("Progress bars disabled.", "Progress bars for operators disabled.")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.PREFIXES)
