"""The four failure classes of DESIGN §7.

A failure is classified once, where the call that failed is made (the metadata-store
client, the transfer backends, the FITS checks …). Callers above only decide what to do
with each class; they never re-guess from exception text.

This module imports nothing from Django so that the science code can raise these too.
"""


class L2Error(Exception):
    """Base class. ``step`` names where it happened (``"scan"``, ``"preprocess.verify"``…)."""

    def __init__(self, message: str, *, step: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.step = step
        self.details = details or {}

    def __str__(self) -> str:  # keep the message readable in logs and in history details
        return self.message


class DoNotRetryError(L2Error):
    """Will fail again: bad FITS, missing frames, an HTTP 4xx. The program goes to Error."""


class RetryError(L2Error):
    """May pass next time: I/O, a lost connection. Retry, bounded."""


class BackoffRetryError(L2Error):
    """A service is down or slow: HTTP 5xx, Globus busy. Retry with backoff and jitter."""


class NonFatalDoNotRetryError(L2Error):
    """Nothing to do: already done, same checksums. Log and finish."""
