"""The ``globus`` transfer backend (DESIGN §7): globus-sdk's ``TransferClient``.

The service authenticates as a confidential client (``GLOBUS_CLIENT_ID`` /
``GLOBUS_CLIENT_SECRET``, the client-credentials grant). Its access token is kept once per
process (:func:`_authorizer`) and reused until it expires; globus-sdk's
``ClientCredentialsAuthorizer`` fetches a new one a minute before that, and after a 401
(the token was revoked or expired early) the request is retried once with a new token.

Every other retry belongs to Celery, not to this module: a 5xx or a busy Globus is raised
at once as a ``BackoffRetryError``, so a worker never sleeps inside globus-sdk. Failures are
classified here, once (:func:`classify`):

========================================================  =====================
Globus says                                               raised
========================================================  =====================
HTTP 5xx, 429, an error code meaning busy/unavailable     ``BackoffRetryError``
(except a code naming a missing path or a permission)
401 (again, after one new token), 403 for the token       ``DoNotRetryError``
any other 4xx (unknown collection, permission, not found) ``DoNotRetryError``
no answer (connection refused/reset, timeout)             ``RetryError``
========================================================  =====================

Each carries ``step="transfer"`` and ``details`` with the HTTP status, Globus's error code and
request id, so an operator can quote them to Globus support.
"""
from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence

import globus_sdk
from django.conf import settings
from globus_sdk.transport import (
    RetryCheckFlags,
    RetryCheckResult,
    RetryConfig,
    RetryContext,
    set_retry_check_flags,
)

from inversions.errors import BackoffRetryError, DoNotRetryError, L2Error, RetryError
from inversions.transfers import STEP, TransferBackend, TransferItem, TransferStatus, check_path

TRANSFER_SCOPE = str(globus_sdk.TransferClient.scopes.all)
APP_NAME = "DKIST L2"

# Globus error codes (4xx) that mean "later", not "never".
_BUSY = re.compile(r"busy|unavailable|toomanyrequests|ratelimit", re.IGNORECASE)
# Codes that mean "never", even with a 5xx (an ExternalError of the collection: no such path).
_PERMANENT = re.compile(r"notfound|permissiondenied", re.IGNORECASE)
# 403 codes that mean the token, not the permission, was refused.
_TOKEN_REFUSED = re.compile(r"authenticat|token|unauthori[sz]ed", re.IGNORECASE)
# Task labels: Globus accepts letters, digits, spaces and a little punctuation, 128 at most.
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9 _,.\-]+")

_tokens: dict[tuple[str, str], globus_sdk.ClientCredentialsAuthorizer] = {}
_tokens_lock = threading.Lock()


def reset_token_cache() -> None:
    """Forget every cached access token (tests; a rotated client secret needs a restart)."""
    with _tokens_lock:
        _tokens.clear()


@set_retry_check_flags(RetryCheckFlags.RUN_ONCE)
def _check_token_refused(ctx: RetryContext) -> RetryCheckResult:
    """A 403 that blames the token (not the permission): drop the token and retry once.

    (A 401 is handled the same way by globus-sdk's own ``check_expired_authorization``.)
    """
    response, authorizer = ctx.response, ctx.caller_info.authorizer if ctx.caller_info else None
    if response is None or authorizer is None or response.status_code != 403:
        return RetryCheckResult.no_decision
    try:
        code = str(response.json().get("code") or "")
    except (ValueError, AttributeError):
        code = ""
    if _TOKEN_REFUSED.search(code) and authorizer.handle_missing_authorization():
        return RetryCheckResult.do_retry
    return RetryCheckResult.no_decision


def _retry_config() -> RetryConfig:
    """One immediate second try, only for a refused token or a dropped connection.

    5xx / 429 / Retry-After are not retried here (empty status lists): Celery retries those
    with backoff and jitter, without holding a worker.
    """
    config = RetryConfig(
        max_retries=1,
        backoff=lambda ctx: 0.0,
        retry_after_status_codes=(),
        transient_error_status_codes=(),
    )
    config.checks.register_check(_check_token_refused)
    return config


def _authorizer(client_id: str, client_secret: str) -> globus_sdk.ClientCredentialsAuthorizer:
    """This process's authorizer for the client (its token cached until it expires)."""
    key = (client_id, hashlib.sha256(client_secret.encode()).hexdigest())
    with _tokens_lock:
        authorizer = _tokens.get(key)
        if authorizer is None:
            auth_client = globus_sdk.ConfidentialAppAuthClient(
                client_id, client_secret, app_name=APP_NAME, retry_config=_retry_config()
            )
            # Fetches the first token now (raises like any other call if Globus says no).
            authorizer = globus_sdk.ClientCredentialsAuthorizer(auth_client, TRANSFER_SCOPE)
            _tokens[key] = authorizer
    return authorizer


def classify(exc: Exception, action: str) -> L2Error:
    """The L2 error class for a globus-sdk failure while trying to ``action``."""
    if isinstance(exc, globus_sdk.GlobusAPIError):
        status = exc.http_status
        code = exc.code or ""
        message = exc.message or exc.text[:300] or exc.http_reason
        details = {"http_status": status, "globus_code": code, "request_id": exc.request_id, "action": action}
        service = "Globus Auth" if isinstance(exc, globus_sdk.AuthAPIError) else "Globus"
        if (status >= 500 or status == 429 or _BUSY.search(code)) and not _PERMANENT.search(code):
            return BackoffRetryError(
                f"{service} is unavailable or busy ({status} {code}) while trying to {action}: {message}",
                step=STEP, details=details,
            )
        if isinstance(exc, globus_sdk.AuthAPIError) and status in (400, 401, 403):
            return DoNotRetryError(
                f"Globus Auth refused the client credentials (GLOBUS_CLIENT_ID / GLOBUS_CLIENT_SECRET): "
                f"{message} ({status} {code})", step=STEP, details=details,
            )
        if status == 401 or (status == 403 and _TOKEN_REFUSED.search(code)):
            return DoNotRetryError(
                f"Globus refused this service's access token, even a new one, while trying to {action}: "
                f"{message} ({status} {code})", step=STEP, details=details,
            )
        return DoNotRetryError(
            f"Globus refused to {action}: {message} ({status} {code})", step=STEP, details=details
        )
    if isinstance(exc, globus_sdk.NetworkError):
        return RetryError(
            f"could not reach Globus to {action}: {type(exc).__name__}: {exc}",
            step=STEP, details={"action": action, "error": type(exc).__name__},
        )
    raise TypeError(f"not a globus-sdk failure: {exc!r}")


def safe_label(label: str) -> str:
    """``label`` with only the characters Globus accepts in a task label, at most 128."""
    return " ".join(_LABEL_UNSAFE.sub(" ", label or "").split())[:128] or "L2 transfer"


class GlobusBackend(TransferBackend):
    """Transfers through the Globus Transfer service, as the confidential client."""

    name = "globus"

    def __init__(self, client_id: str, client_secret: str, *, poll_seconds: float = 30.0) -> None:
        if not client_id or not client_secret:
            raise DoNotRetryError(
                "the globus transfer backend needs GLOBUS_CLIENT_ID and GLOBUS_CLIENT_SECRET",
                step=STEP, details={"setting": "GLOBUS_CLIENT_ID" if not client_id else "GLOBUS_CLIENT_SECRET"},
            )
        self.client_id = client_id
        self._client_secret = client_secret
        self.poll_seconds = poll_seconds
        self._client: globus_sdk.TransferClient | None = None

    @classmethod
    def from_settings(cls) -> GlobusBackend:
        return cls(
            getattr(settings, "GLOBUS_CLIENT_ID", "") or "",
            getattr(settings, "GLOBUS_CLIENT_SECRET", "") or "",
            poll_seconds=float(getattr(settings, "GLOBUS_POLL_SECONDS", 30.0)),
        )

    def __repr__(self) -> str:  # never the secret
        return f"GlobusBackend(client_id={self.client_id!r})"

    def _call(self, action: str, fn):
        """Run ``fn(transfer_client)``, classifying what globus-sdk raises."""
        try:
            if self._client is None:
                self._client = globus_sdk.TransferClient(
                    authorizer=_authorizer(self.client_id, self._client_secret),
                    app_name=APP_NAME,
                    retry_config=_retry_config(),
                )
            return fn(self._client)
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as exc:
            raise classify(exc, action) from exc

    def new_submission_id(self) -> str:
        """A submission id from Globus (``GET /submission_id``); store it, then submit with it."""
        return str(self._call("get a submission id", lambda tc: tc.get_submission_id()["value"]))

    def submit(
        self,
        source_collection: str,
        destination_collection: str,
        items: Sequence[TransferItem],
        *,
        label: str,
        submission_id: str | None = None,
    ) -> str:
        if not items:
            raise DoNotRetryError("nothing to transfer (no items)", step=STEP)
        data = globus_sdk.TransferData(
            source_collection,
            destination_collection,
            label=safe_label(label),
            submission_id=submission_id or self.new_submission_id(),
            sync_level="checksum",
            verify_checksum=True,
            preserve_timestamp=True,
            notify_on_succeeded=False,
            notify_on_failed=False,
            notify_on_inactive=False,
        )
        for item in items:
            check_path(item.source, what="source path")
            check_path(item.destination, what="destination path")
            data.add_item(item.source, item.destination, recursive=item.recursive)
        action = f"transfer {len(items)} item(s) from {source_collection} to {destination_collection}"
        response = self._call(action, lambda tc: tc.submit_transfer(data))
        # "Accepted" for a new task; "Duplicate" (same task id) when this submission id was
        # already accepted, e.g. the Celery task was redelivered after its worker died.
        return str(response["task_id"])

    def status(self, task_id: str) -> TransferStatus:
        task = self._call(f"read transfer task {task_id}", lambda tc: tc.get_task(task_id))
        state = task.get("status")
        details = {
            "globus_status": state,
            "nice_status": task.get("nice_status"),
            "files_total": task.get("files", 0) or 0,
            "faults": task.get("faults", 0) or 0,
        }
        if task.get("nice_status") not in (None, "OK", "Queued"):
            # ACTIVE but stuck (e.g. PERMISSION_DENIED): Globus keeps retrying until the
            # deadline. Shown as progress; the caller's own timeout decides when to give up.
            details["problem"] = task.get("nice_status_short_description") or task.get("nice_status")
        done = state in ("SUCCEEDED", "FAILED")
        ok = state == "SUCCEEDED"
        error = ""
        if state == "FAILED":
            error, reason = self._failure_reason(task_id, task)
            details.update(reason)
        return TransferStatus(
            task_id=str(task_id),
            done=done,
            ok=ok,
            files=task.get("files_transferred", 0) or 0,
            files_skipped=task.get("files_skipped", 0) or 0,
            bytes=task.get("bytes_transferred", 0) or 0,
            error=error,
            details=details,
        )

    def _failure_reason(self, task_id: str, task) -> tuple[str, dict]:
        """Why a FAILED task failed, for people: its fatal error, else its last error event."""
        fatal = task.get("fatal_error") or {}
        if fatal.get("description") or fatal.get("code"):
            code = fatal.get("code") or ""
            text = fatal.get("description") or code
            return f"Globus transfer failed: {text}" + (f" ({code})" if code and code != text else ""), {
                "fatal_error": code
            }
        events = self._call(
            f"read the events of transfer task {task_id}", lambda tc: list(tc.task_event_list(task_id, limit=20))
        )
        errors = [event for event in events if event.get("is_error")]
        if errors:
            event = errors[0]  # Globus lists the newest first
            text = event.get("description") or event.get("code") or "error"
            more = (event.get("details") or "").strip()
            return f"Globus transfer failed: {text}" + (f": {more[:300]}" if more else ""), {
                "event_code": event.get("code")
            }
        text = task.get("nice_status_short_description") or task.get("nice_status") or "no reason given"
        return f"Globus transfer failed: {text}", {}
