"""Logging filters of the site (settings.LOGGING)."""
from __future__ import annotations

import logging


class ExpectedAnswers(logging.Filter):
    """A 403 (``PermissionDenied``: a user without the role) is an expected answer: one line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "status_code", None) == 403 and record.exc_info:
            record.exc_info = None
            record.exc_text = None
        return True
