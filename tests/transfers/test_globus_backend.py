"""The globus transfer backend against globus-sdk's registered responses (no network).

Nothing of globus-sdk is mocked: its clients, authorizer, retry checks and error parsing all
run; only the HTTP answers come from ``globus_sdk.testing`` / ``responses``.
"""
from __future__ import annotations

import base64
import json
import runpy
from pathlib import Path
from urllib.parse import parse_qs

import globus_sdk
import pytest
import requests
from django.core.exceptions import ImproperlyConfigured
from globus_sdk.testing import RegisteredResponse, get_response_set, load_response

from inversions.errors import BackoffRetryError, DoNotRetryError, RetryError
from inversions.globus_transfers import GlobusBackend, safe_label
from inversions.transfers import TransferItem, get_backend, transfer_and_wait

pytestmark = pytest.mark.usefixtures("globus_http")

SRC = "aaaaaaaa-0000-4000-8000-00000000000a"  # L1 collection
DST = "bbbbbbbb-0000-4000-8000-00000000000b"  # scratch collection
TASK = get_response_set(globus_sdk.TransferClient.submit_transfer).metadata["task_id"]
SUBMISSION = "cccccccc-0000-4000-8000-00000000000c"
ITEMS = [
    TransferItem("/pid_1_118/P1/ABCDE/", "/stage/P1/ABCDE/"),
    TransferItem("/pid_1_118/P1/manifest.json", "/stage/P1/manifest.json"),
]


def backend() -> GlobusBackend:
    return GlobusBackend("l2-client-id", "l2-client-secret", poll_seconds=0)


def token(access_token: str = "token-a", expires_in: int = 172800):
    """One client-credentials grant answered by Globus Auth."""
    return load_response(
        RegisteredResponse(
            service="auth", path="/v2/oauth2/token", method="POST",
            json={
                "access_token": access_token, "scope": "urn:globus:auth:scope:transfer.api.globus.org:all",
                "expires_in": expires_in, "token_type": "Bearer", "resource_server": "transfer.api.globus.org",
                "other_tokens": [],
            },
        )
    )


def transfer_error(status: int, code: str, message: str, path: str = "/v0.10/transfer", method: str = "POST"):
    return load_response(
        RegisteredResponse(
            service="transfer", path=path, method=method, status=status,
            json={"code": code, "message": message, "request_id": "req-42", "resource": path},
        )
    )


def accepted(code: str = "Accepted"):
    return load_response(
        RegisteredResponse(
            service="transfer", path="/v0.10/transfer", method="POST", status=202 if code == "Accepted" else 200,
            json={"DATA_TYPE": "transfer_result", "code": code, "task_id": TASK, "submission_id": SUBMISSION,
                  "message": "The transfer has been accepted", "request_id": "req-1", "resource": "/transfer"},
        )
    )


def task(status: str, **fields):
    document = {
        "DATA_TYPE": "task", "task_id": TASK, "type": "TRANSFER", "status": status, "label": "L2",
        "nice_status": "OK" if status == "ACTIVE" else None, "nice_status_short_description": None,
        "fatal_error": None, "files": 10, "files_transferred": 0, "files_skipped": 0, "bytes_transferred": 0,
        "faults": 0, "is_ok": status != "FAILED",
    }
    document.update(fields)
    return load_response(RegisteredResponse(service="transfer", path=f"/v0.10/task/{TASK}", json=document))


def calls(host: str, globus_http) -> list:
    return [call.request for call in globus_http.calls if host in call.request.url]


def transfer_requests(globus_http) -> list:
    return [r for r in calls("transfer.api.globus.org", globus_http) if r.url.endswith("/v0.10/transfer")]


# --- authorisation ------------------------------------------------------------------------


def test_client_credentials_grant_and_bearer_token(globus_http):
    load_response("auth.oauth2_client_credentials_tokens")
    accepted()
    assert backend().submit(SRC, DST, ITEMS, label="stage", submission_id=SUBMISSION) == TASK
    (grant,) = calls("auth.globus.org", globus_http)
    form = parse_qs(grant.body)
    assert form["grant_type"] == ["client_credentials"]
    assert form["scope"] == ["urn:globus:auth:scope:transfer.api.globus.org:all"]
    assert grant.headers["Authorization"] == "Basic " + base64.b64encode(b"l2-client-id:l2-client-secret").decode()
    (submit,) = transfer_requests(globus_http)
    assert submit.headers["Authorization"] == "Bearer DUMMY_TRANSFER_TOKEN_FROM_THE_INTERTUBES"


def test_token_is_reused_by_every_backend_of_the_process(globus_http):
    token("token-a")
    task("ACTIVE")
    get_task_calls = [backend().status(TASK) for _ in range(3)]
    assert [s.done for s in get_task_calls] == [False, False, False]
    assert len(calls("auth.globus.org", globus_http)) == 1
    assert {r.headers["Authorization"] for r in calls("transfer.api", globus_http)} == {"Bearer token-a"}


def test_expired_token_is_replaced_and_the_new_one_reused(globus_http):
    token("token-old", expires_in=0)  # already expired when it arrives
    token("token-new")
    task("ACTIVE")
    backend().status(TASK)
    backend().status(TASK)
    assert len(calls("auth.globus.org", globus_http)) == 2
    assert [r.headers["Authorization"] for r in calls("transfer.api", globus_http)] == ["Bearer token-new"] * 2


@pytest.mark.parametrize("status, code", [(401, "AuthenticationFailed"), (403, "ClientError.AuthenticationFailed")])
def test_refused_token_is_dropped_and_the_request_retried_once(globus_http, status, code):
    token("token-a")
    token("token-b")
    transfer_error(status, code, "Token is not active")
    accepted()
    assert backend().submit(SRC, DST, ITEMS, label="stage", submission_id=SUBMISSION) == TASK
    first, second = transfer_requests(globus_http)
    assert (first.headers["Authorization"], second.headers["Authorization"]) == ("Bearer token-a", "Bearer token-b")
    assert json.loads(first.body)["submission_id"] == json.loads(second.body)["submission_id"] == SUBMISSION
    # the new token is the process's token from now on
    task("ACTIVE")
    backend().status(TASK)
    assert calls("transfer.api", globus_http)[-1].headers["Authorization"] == "Bearer token-b"
    assert len(calls("auth.globus.org", globus_http)) == 2


def test_token_refused_again_after_a_new_one_is_do_not_retry(globus_http):
    token("token-a")
    token("token-b")
    transfer_error(401, "AuthenticationFailed", "Token is not active")
    with pytest.raises(DoNotRetryError) as raised:
        backend().submit(SRC, DST, ITEMS, label="stage", submission_id=SUBMISSION)
    assert len(transfer_requests(globus_http)) == 2  # one retry, not more
    assert len(calls("auth.globus.org", globus_http)) == 2
    assert "Token is not active" in str(raised.value)
    assert raised.value.step == "transfer"
    assert raised.value.details["http_status"] == 401
    assert raised.value.details["globus_code"] == "AuthenticationFailed"


def test_bad_client_credentials_are_do_not_retry_and_name_the_settings(globus_http):
    load_response(
        RegisteredResponse(service="auth", path="/v2/oauth2/token", method="POST", status=401,
                           json={"error": "invalid_client"})
    )
    with pytest.raises(DoNotRetryError, match="GLOBUS_CLIENT_ID / GLOBUS_CLIENT_SECRET") as raised:
        backend().status(TASK)
    assert raised.value.details["http_status"] == 401
    assert calls("transfer.api", globus_http) == []


def test_globus_auth_down_is_backoff(globus_http):
    load_response(RegisteredResponse(service="auth", path="/v2/oauth2/token", method="POST", status=503, body="down"))
    with pytest.raises(BackoffRetryError, match="Globus Auth is unavailable"):
        backend().status(TASK)
    assert len(calls("auth.globus.org", globus_http)) == 1  # Celery backs off, not the worker


def test_missing_credentials_are_a_clear_error(settings):
    settings.GLOBUS_CLIENT_ID = "l2-client-id"
    settings.GLOBUS_CLIENT_SECRET = ""
    with pytest.raises(DoNotRetryError, match="GLOBUS_CLIENT_ID and GLOBUS_CLIENT_SECRET"):
        get_backend("globus")
    settings.GLOBUS_CLIENT_SECRET = "s3cret"
    configured = get_backend("globus")
    assert isinstance(configured, GlobusBackend) and "s3cret" not in repr(configured)


def test_settings_refuse_globus_without_credentials(monkeypatch):
    settings_file = Path(__file__).resolve().parents[2] / "l2site" / "settings.py"
    monkeypatch.setenv("L2_TRANSFER_BACKEND", "globus")
    monkeypatch.delenv("GLOBUS_CLIENT_ID", raising=False)
    monkeypatch.delenv("GLOBUS_CLIENT_SECRET", raising=False)
    with pytest.raises(ImproperlyConfigured, match="GLOBUS_CLIENT_ID and GLOBUS_CLIENT_SECRET"):
        runpy.run_path(str(settings_file))
    monkeypatch.setenv("GLOBUS_CLIENT_ID", "id")
    monkeypatch.setenv("GLOBUS_CLIENT_SECRET", "secret")
    monkeypatch.setenv("GLOBUS_POLL_SECONDS", "5")
    values = runpy.run_path(str(settings_file))
    assert (values["GLOBUS_CLIENT_ID"], values["GLOBUS_POLL_SECONDS"]) == ("id", 5.0)
    monkeypatch.setenv("L2_TRANSFER_BACKEND", "ftp")
    with pytest.raises(ImproperlyConfigured, match="local or globus"):
        runpy.run_path(str(settings_file))


# --- submit -------------------------------------------------------------------------------


def test_submit_sends_a_checksum_transfer_with_the_submission_id(globus_http):
    token()
    accepted()
    task_id = backend().submit(SRC, DST, ITEMS, label="Stage pid_1_118 (program #7)", submission_id=SUBMISSION)
    assert task_id == TASK
    (request,) = transfer_requests(globus_http)
    body = json.loads(request.body)
    assert body["DATA_TYPE"] == "transfer"
    assert (body["source_endpoint"], body["destination_endpoint"]) == (SRC, DST)
    assert body["sync_level"] == 3  # "checksum" on the wire
    assert body["verify_checksum"] is True
    assert body["submission_id"] == SUBMISSION
    assert body["label"] == "Stage pid_1_118 program 7"
    assert [(i["source_path"], i["destination_path"], i["recursive"]) for i in body["DATA"]] == [
        ("/pid_1_118/P1/ABCDE/", "/stage/P1/ABCDE/", True),
        ("/pid_1_118/P1/manifest.json", "/stage/P1/manifest.json", False),
    ]


def test_submission_id_comes_from_globus_when_none_is_given(globus_http):
    token()
    fixture = load_response(globus_sdk.TransferClient.get_submission_id)
    accepted()
    new_id = backend().new_submission_id()
    assert new_id == fixture.metadata["submission_id"]
    backend().submit(SRC, DST, ITEMS[:1], label="stage")
    assert json.loads(transfer_requests(globus_http)[0].body)["submission_id"] == fixture.metadata["submission_id"]


def test_resubmitting_with_the_same_submission_id_returns_the_same_task(globus_http):
    """A redelivered Celery task submits again: Globus answers Duplicate with the first task."""
    token()
    accepted("Accepted")
    accepted("Duplicate")
    first = backend().submit(SRC, DST, ITEMS, label="stage", submission_id=SUBMISSION)
    again = backend().submit(SRC, DST, ITEMS, label="stage", submission_id=SUBMISSION)
    assert first == again == TASK
    bodies = [json.loads(r.body) for r in transfer_requests(globus_http)]
    assert [b["submission_id"] for b in bodies] == [SUBMISSION, SUBMISSION]
    assert bodies[0] == bodies[1]


@pytest.mark.parametrize(
    "status, code, message",
    [
        (500, "ServerError.Internal", "internal error"),
        (502, "ExternalError.DirListingFailed", "endpoint did not answer"),
        (503, "ServiceUnavailable", "Globus is down for maintenance"),
        (429, "TooManyRequests", "slow down"),
        (409, "EndpointBusy", "the collection is busy"),
    ],
)
def test_unavailable_or_busy_globus_is_backoff(globus_http, status, code, message):
    token()
    transfer_error(status, code, message)
    with pytest.raises(BackoffRetryError) as raised:
        backend().submit(SRC, DST, ITEMS, label="stage", submission_id=SUBMISSION)
    assert message in str(raised.value)
    assert raised.value.step == "transfer"
    assert raised.value.details == {
        "http_status": status, "globus_code": code, "request_id": "req-42",
        "action": "transfer 2 item(s) from " + SRC + " to " + DST,
    }
    assert len(transfer_requests(globus_http)) == 1  # no sleeping retries inside the worker


@pytest.mark.parametrize(
    "status, code, message",
    [
        (404, "EndpointNotFound", f"No such collection '{DST}'"),
        (403, "PermissionDenied", "You do not have permission to write to /stage"),
        (400, "ClientError.BadRequest", "Invalid path"),
        (409, "Conflict", "Source and destination are the same"),
        (502, "ExternalError.DirListingFailed.NotFound", "Directory '/pid_1_118/P1' not found"),
    ],
)
def test_other_client_errors_are_do_not_retry_with_globus_message(globus_http, status, code, message):
    token()
    transfer_error(status, code, message)
    with pytest.raises(DoNotRetryError) as raised:
        backend().submit(SRC, DST, ITEMS, label="stage", submission_id=SUBMISSION)
    assert str(raised.value).startswith("Globus refused to transfer 2 item(s)")
    assert message in str(raised.value) and code in str(raised.value)
    assert (raised.value.details["http_status"], raised.value.details["globus_code"]) == (status, code)
    assert len(transfer_requests(globus_http)) == 1
    assert len(calls("auth.globus.org", globus_http)) == 1  # a permission error is not a token problem


@pytest.mark.parametrize(
    "failure, name",
    [(requests.ConnectionError("connection refused"), "GlobusConnectionError"),
     (requests.ReadTimeout("read timed out"), "GlobusTimeoutError")],
)
def test_network_errors_are_retry(globus_http, failure, name):
    token()
    for _ in range(2):  # the SDK tries twice at once; then it is Celery's turn
        load_response(RegisteredResponse(service="transfer", path=f"/v0.10/task/{TASK}", body=failure))
    with pytest.raises(RetryError) as raised:
        backend().status(TASK)
    assert not isinstance(raised.value, BackoffRetryError)
    assert raised.value.details == {"action": f"read transfer task {TASK}", "error": name}
    assert "could not reach Globus" in str(raised.value)


def test_a_dropped_connection_is_retried_once_at_once(globus_http):
    token()
    load_response(RegisteredResponse(service="transfer", path=f"/v0.10/task/{TASK}",
                                     body=requests.ConnectionError("reset by peer")))
    task("SUCCEEDED")
    assert backend().status(TASK).ok


def test_submit_refuses_bad_items_before_calling_globus(globus_http):
    with pytest.raises(DoNotRetryError, match="no items"):
        backend().submit(SRC, DST, [], label="stage", submission_id=SUBMISSION)
    with pytest.raises(DoNotRetryError, match="contains '..'"):
        backend().submit(SRC, DST, [TransferItem("/a/../../etc/", "/x/")], label="stage", submission_id=SUBMISSION)
    with pytest.raises(DoNotRetryError, match="must be absolute"):
        backend().submit(SRC, DST, [TransferItem("/a/f.fits", "f.fits")], label="stage", submission_id=SUBMISSION)
    assert len(globus_http.calls) == 0


def test_labels_keep_only_what_globus_accepts():
    assert safe_label("Stage pid_1_118: [arm 2] / ViSP") == "Stage pid_1_118 arm 2 ViSP"
    assert len(safe_label("x" * 500)) == 128
    assert safe_label("///") == "L2 transfer"


# --- status -------------------------------------------------------------------------------


def test_status_active_then_succeeded(globus_http):
    token()
    task("ACTIVE", files=10, files_transferred=4, files_skipped=1, bytes_transferred=4096)
    task("SUCCEEDED", files=10, files_transferred=9, files_skipped=1, bytes_transferred=9216, nice_status=None)
    running = backend().status(TASK)
    assert (running.done, running.files, running.files_skipped, running.bytes) == (False, 4, 1, 4096)
    assert running.details["globus_status"] == "ACTIVE" and "problem" not in running.details
    finished = backend().status(TASK)
    assert (finished.done, finished.ok, finished.error) == (True, True, "")
    assert (finished.files, finished.files_skipped, finished.bytes) == (9, 1, 9216)
    assert finished.task_id == TASK


def test_status_of_a_stuck_task_shows_the_problem(globus_http):
    token()
    task("ACTIVE", nice_status="PERMISSION_DENIED", nice_status_short_description="permission denied", faults=3)
    stuck = backend().status(TASK)
    assert not stuck.done
    assert stuck.details["problem"] == "permission denied" and stuck.details["faults"] == 3


def test_status_inactive_is_not_done(globus_http):
    token()
    task("INACTIVE", nice_status="PAUSED_BY_ADMIN", nice_status_short_description="paused by an administrator")
    paused = backend().status(TASK)
    assert not paused.done and paused.details["problem"] == "paused by an administrator"


def test_failed_task_surfaces_its_fatal_error(globus_http):
    token()
    task("FAILED", fatal_error={"code": "FILE_NOT_FOUND", "description": "No such file or directory: /pid_1_118/P1"})
    failed = backend().status(TASK)
    assert (failed.done, failed.ok) == (True, False)
    assert failed.error == "Globus transfer failed: No such file or directory: /pid_1_118/P1 (FILE_NOT_FOUND)"
    assert failed.details["fatal_error"] == "FILE_NOT_FOUND"


def test_failed_task_without_fatal_error_uses_its_last_error_event(globus_http):
    token()
    task("FAILED", nice_status_short_description="failed")
    load_response(
        RegisteredResponse(
            service="transfer", path=f"/v0.10/task/{TASK}/event_list",
            json={"DATA_TYPE": "event_list", "offset": 0, "limit": 20, "total": 2, "DATA": [
                {"DATA_TYPE": "event", "code": "PERMISSION_DENIED", "is_error": True, "time": "2026-11-20 10:02:00",
                 "description": "permission denied", "details": "Access denied on /stage/P1"},
                {"DATA_TYPE": "event", "code": "STARTED", "is_error": False, "time": "2026-11-20 10:00:00",
                 "description": "started", "details": ""},
            ]},
        )
    )
    failed = backend().status(TASK)
    assert failed.error == "Globus transfer failed: permission denied: Access denied on /stage/P1"
    assert failed.details["event_code"] == "PERMISSION_DENIED"


def test_status_of_an_unknown_task_is_do_not_retry(globus_http):
    token()
    transfer_error(404, "TaskNotFound", f"Task {TASK} not found", path=f"/v0.10/task/{TASK}", method="GET")
    with pytest.raises(DoNotRetryError, match="not found"):
        backend().status(TASK)


# --- transfer_and_wait ----------------------------------------------------------------------


def test_transfer_and_wait_polls_until_done(globus_http):
    token()
    accepted()
    task("ACTIVE")
    task("ACTIVE", files_transferred=5)
    task("SUCCEEDED", files_transferred=10, bytes_transferred=10240)
    slept = []
    status = transfer_and_wait(backend(), SRC, DST, ITEMS, label="stage", submission_id=SUBMISSION,
                               poll_seconds=7, sleep=slept.append)
    assert status.ok and status.files == 10
    assert slept == [7, 7]


def test_transfer_and_wait_raises_the_failure_reason(globus_http):
    token()
    accepted()
    task("FAILED", fatal_error={"code": "PERMISSION_DENIED", "description": "permission denied on /stage"})
    with pytest.raises(DoNotRetryError, match="permission denied on /stage") as raised:
        transfer_and_wait(backend(), SRC, DST, ITEMS, label="stage", submission_id=SUBMISSION, sleep=lambda s: None)
    assert raised.value.details["task_id"] == TASK


def test_transfer_and_wait_gives_up_after_its_timeout(globus_http):
    token()
    accepted()
    task("ACTIVE")
    with pytest.raises(RetryError, match="still running") as raised:
        transfer_and_wait(backend(), SRC, DST, ITEMS, label="stage", submission_id=SUBMISSION, timeout=0)
    assert raised.value.details["task_id"] == TASK
    assert raised.value.details["submission_id"] == SUBMISSION
