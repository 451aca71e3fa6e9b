"""The metadata-store GraphQL client (DESIGN §5, §9).

``POST <url>`` with ``{"query", "variables"}`` and header ``Authorization: <token>``, over
one ``requests.Session`` (connection reuse). Failures are classified here, where the call
is made (DESIGN §7, ``inversions.errors``):

* HTTP 4xx (but 408 / 429), a GraphQL ``errors`` answer, a request that cannot be sent
  (bad URL …), an answer without the expected field → :class:`DoNotRetryError`, carrying
  the store's message;
* HTTP 5xx, 408, 429, timeouts, connection errors, a body that is not JSON or not a
  GraphQL answer → retried here with exponential backoff and full jitter, at most
  ``max_attempts`` requests, then :class:`BackoffRetryError`;
* a request (its tries and the waits between them) still unanswered at its ``deadline``
  → :class:`BackoffRetryError`: a watchdog cuts the connection of an answer that trickles
  in (the per-read ``timeout`` alone never ends a store sending a byte every few seconds);
* a store that ignores ``pageNumber`` (a page with the records of an earlier page) →
  :class:`DoNotRetryError`, rather than paging on until the store stops.

Records are returned raw (as the store sent them, whatever their shape): parsing and
per-record errors belong to the scan. Plain Python, no Django.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from inversions.errors import BackoffRetryError, DoNotRetryError

logger = logging.getLogger(__name__)

#: The dataset fields L2 reads (DESIGN §5).
DATASET_FIELDS: tuple[str, ...] = (
    "datasetId", "productId", "primaryProposalId", "primaryExperimentId",
    "observingProgramExecutionId", "instrumentProgramExecutionId", "instrumentName",
    "createDate", "updateDate", "startTime", "endTime", "wavelengthMin", "wavelengthMax",
    "stokesParameters", "spectralLines", "boundingBox", "frameCount", "health", "gosStatus",
    "aoLocked", "lightLevel", "friedParameter", "exposureTime", "bucket", "browseMovieUrl",
    "isEmbargoed", "embargoEndDate", "experimentDescription",
    # quality and product fields (issue 12)
    "polarimetricAccuracy", "qualityAverageFriedParameter", "qualityAveragePolarimetricAccuracy",
    "qualityReportObjectKey", "browseMovieObjectKey", "datasetSize", "hasAllStokes", "targetTypes", "status",
    "asdfObjectKey",
)

#: Fields of ``L2InversionInventoryResponse``.
L2_INVERSION_FIELDS: tuple[str, ...] = (
    "inversionId", "primaryProposalId", "instrumentProgramExecutionId", "bucket",
    "asdfObjectKey", "datasetIds", "spectralLines", "createDate", "updateDate",
)

DATASET_INVENTORIES_QUERY = (
    "query DatasetInventories($filterParams: DatasetInventoriesRequest) "
    "{ datasetInventories(filterParams: $filterParams) { " + " ".join(DATASET_FIELDS) + " } }"
)
DATASET_INVENTORIES_COUNT_QUERY = (
    "query DatasetInventoriesRecordCount($filterParams: DatasetInventoryRecordCountRequest) "
    "{ datasetInventoriesRecordCount(filterParams: $filterParams) { recordCount } }"
)
EXPERIMENT_DESCRIPTIONS_QUERY = (
    "query ExperimentDescriptions { experimentDescriptions { experimentId experimentDescription } }"
)
L2_INVERSIONS_QUERY = (
    "query L2Inversions($filterParams: L2InversionInventoriesRequest) "
    "{ l2Inversions(filterParams: $filterParams) { " + " ".join(L2_INVERSION_FIELDS) + " } }"
)
CREATE_L2_INVERSION_MUTATION = (
    "mutation CreateL2InversionInventory($createParams: L2InversionInventory!) "
    "{ createL2InversionInventory(createParams: $createParams) { " + " ".join(L2_INVERSION_FIELDS) + " } }"
)
#: The fields of the ``L2InversionInventory`` input.
L2_INVERSION_INPUT_FIELDS: tuple[str, ...] = (
    "inversionId", "primaryProposalId", "instrumentProgramExecutionId", "bucket",
    "asdfObjectKey", "datasetIds", "spectralLines",
)

_RETRYABLE_4XX = (408, 429)  # Request Timeout, Too Many Requests: the server asks to retry


class _Transient(Exception):
    """A failure worth retrying (internal)."""


# --- The deadline's watchdog ----------------------------------------------------------------
_watched = threading.local()  # .watch: the _Watchdog of the request this thread is sending


class _Watchdog:
    """Shuts down the socket of the request sent in this thread once ``seconds`` have passed."""

    def __init__(self, seconds: float):
        self.connection = None  # the urllib3 connection the request went out on (_TrackedConnection)
        self.fired = False
        self._timer = threading.Timer(max(0.0, seconds), self._cut)
        self._timer.daemon = True

    def _cut(self) -> None:
        self.fired = True
        sock = getattr(self.connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once
            except OSError:
                pass

    def __enter__(self) -> _Watchdog:
        _watched.watch = self
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()
        _watched.watch = None


class _TrackedConnection:
    """Tells this thread's watchdog which connection a request goes out on."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        watch = getattr(_watched, "watch", None)
        if watch is not None:
            watch.connection = self
        return super().request(*args, **kwargs)


class _HTTPConnection(_TrackedConnection, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_TrackedConnection, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter over connections a watchdog can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def _session() -> requests.Session:
    session = requests.Session()
    for prefix in ("http://", "https://"):
        session.mount(prefix, _DeadlineAdapter())
    return session


def _page_key(page: Sequence[Any]) -> str:
    """What identifies a page's records: their datasetIds (the whole records when they have none)."""
    ids = [item.get("datasetId") if isinstance(item, Mapping) else None for item in page]
    text = "\n".join(map(str, ids)) if any(i is not None for i in ids) else json.dumps(page, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()  # ids may hold lone surrogates


def format_store_datetime(value: datetime | str) -> str:
    """A DateTime argument: naive UTC ISO (the store's own format); strings pass as given."""
    if isinstance(value, str):
        return value
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds")


def _store_message(response: requests.Response, limit: int = 500) -> str:
    """The store's own words from an error answer (GraphQL errors, detail, or text)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            return "; ".join(str(e.get("message", e)) if isinstance(e, Mapping) else str(e) for e in errors)[:limit]
        for key in ("detail", "message", "error"):
            if body.get(key):
                return str(body[key])[:limit]
    text = response.text.strip()
    return text[:limit] if text else response.reason or ""


class RecordPage(list):
    """A page of raw dataset records as the store sent them.

    ``finite`` is True when the answer held no ``NaN`` / ``Infinity`` literal (JSON has none,
    but Python's parser accepts them), so that no record of the page needs checking for them.
    """

    def __init__(self, items: Iterable[Any] = (), *, finite: bool = False):
        super().__init__(items)
        self.finite = finite


class MetadataStoreClient:
    """GraphQL client of the metadata store.

    ``timeout`` is passed to requests (seconds, or ``(connect, read)``). Transient failures
    are retried up to ``max_attempts`` requests in all, sleeping
    ``uniform(0, min(backoff_max, backoff_base * 2**(n-1)))`` after the n-th failure.
    ``request_count`` counts HTTP requests sent (retries included). ``step`` is put on
    raised errors. ``deadline`` (seconds, ``None``: none) bounds each request in all: its
    tries, the reading of their answers and the waits between them.
    """

    def __init__(self, url: str, token: str | None, timeout: float | tuple[float, float] = (10.0, 60.0),
                 max_attempts: int = 5, backoff_base: float = 0.5, session: requests.Session | None = None,
                 *, backoff_max: float = 30.0, step: str = "metadata_store",
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
                 deadline: float | None = 120.0):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if deadline is not None and deadline <= 0:
            raise ValueError("deadline must be positive (or None)")
        self.deadline = deadline
        self.url = url
        self.token = token
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.step = step
        self._answers = threading.local()  # per thread: .finite, the last answer held no NaN / Infinity literal
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._own_session = session is None
        self.session = session or _session()
        self._count_lock = threading.Lock()
        self.request_count = 0

    # -- plumbing
    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> MetadataStoreClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def backoff_delay(self, failures: int) -> float:
        """Full jitter: a uniform draw in [0, min(backoff_max, backoff_base * 2**(failures-1))]."""
        return self._rng.uniform(0.0, min(self.backoff_max, self.backoff_base * 2 ** (failures - 1)))

    def query(self, query: str, variables: Mapping[str, Any] | None = None, *,
              operation_name: str | None = None) -> dict:
        """Send one GraphQL request; returns the ``data`` object of the answer."""
        payload: dict[str, Any] = {"query": query}
        if variables:
            payload["variables"] = dict(variables)
        if operation_name:
            payload["operationName"] = operation_name
        headers = {"Authorization": self.token} if self.token is not None else {}
        last = ""
        ends = None if self.deadline is None else time.monotonic() + self.deadline
        attempt = 0
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._attempt(payload, headers, ends)
            except _Transient as transient:
                last = str(transient)
            left = None if ends is None else ends - time.monotonic()
            if left is not None and left <= 0:
                break
            if attempt < self.max_attempts:
                delay = self.backoff_delay(attempt)
                if left is not None and delay >= left:  # no time for another try
                    break
                logger.warning("metadata store: %s (attempt %d/%d), retrying in %.2fs",
                               last, attempt, self.max_attempts, delay)
                self._sleep(delay)
        else:
            raise BackoffRetryError(
                f"metadata store unavailable after {self.max_attempts} attempts: {last}",
                step=self.step, details={"url": self.url, "attempts": self.max_attempts, "last_error": last})
        raise BackoffRetryError(
            f"metadata store: no answer within the deadline of {self.deadline:g} s ({attempt} attempt"
            f"{'s' if attempt != 1 else ''}): {last}",
            step=self.step, details={"url": self.url, "attempts": attempt, "deadline": self.deadline,
                                     "last_error": last})

    def _timeout(self, left: float) -> float | tuple[float, float]:
        """The per-read timeout, never beyond the time left."""
        if isinstance(self.timeout, tuple):
            return tuple(min(t, left) for t in self.timeout)
        return min(self.timeout, left)

    def _attempt(self, payload: dict, headers: dict, ends: float | None = None) -> dict:
        with self._count_lock:
            self.request_count += 1
        left = None if ends is None else ends - time.monotonic()
        if left is not None and left <= 0:
            raise _Transient("the deadline passed")
        watch = _Watchdog(left) if left is not None else contextlib.nullcontext()
        try:
            with watch:
                response = self.session.post(self.url, json=payload, headers=headers,
                                             timeout=self.timeout if left is None else self._timeout(left))
        except requests.RequestException as error:
            if getattr(watch, "fired", False):  # cut by the watchdog
                raise _Transient(f"the answer was not complete within the deadline of {self.deadline:g} s") from error
            if isinstance(error, requests.Timeout):
                raise _Transient(f"timeout: {error}") from error
            if isinstance(error, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
                raise _Transient(f"connection error: {error}") from error
            raise DoNotRetryError(f"cannot send the request to the metadata store: {error}",
                                  step=self.step, details={"url": self.url}) from error
        status = response.status_code
        if status >= 500 or status in _RETRYABLE_4XX:
            raise _Transient(f"HTTP {status}: {_store_message(response, 200)}")
        if status >= 400:
            message = _store_message(response)
            raise DoNotRetryError(f"metadata store refused the request (HTTP {status}): {message}",
                                  step=self.step, details={"url": self.url, "status": status, "message": message})
        if not 200 <= status < 300:
            raise DoNotRetryError(f"unexpected HTTP {status} from the metadata store",
                                  step=self.step, details={"url": self.url, "status": status})
        nonfinite = []
        try:
            body = json.loads(response.content, parse_constant=lambda name: nonfinite.append(name) or float(name))
        except ValueError as error:
            raise _Transient(f"malformed JSON answer ({len(response.content)} bytes): {error}") from error
        if not isinstance(body, dict) or not ("data" in body or "errors" in body):
            raise _Transient(f"not a GraphQL answer: {str(body)[:200]}")
        errors = body.get("errors")
        if errors:
            messages = [str(e.get("message", e)) if isinstance(e, Mapping) else str(e)
                        for e in (errors if isinstance(errors, list) else [errors])]
            raise DoNotRetryError("metadata store answered with errors: " + "; ".join(messages),
                                  step=self.step, details={"url": self.url, "graphql_errors": errors,
                                                           "data": body.get("data")})
        data = body.get("data")
        if not isinstance(data, dict):
            raise DoNotRetryError("metadata store answer has no data", step=self.step,
                                  details={"url": self.url, "body": str(body)[:500]})
        self._answers.finite = not nonfinite
        return data

    def _field(self, data: Mapping[str, Any], name: str, kind: type) -> Any:
        value = data.get(name)
        if not isinstance(value, kind):
            raise DoNotRetryError(f"metadata store answer: {name} is {type(value).__name__}, "
                                  f"expected {kind.__name__}", step=self.step, details={"url": self.url})
        return value

    # -- datasets
    @staticmethod
    def dataset_filter(update_date_min: datetime | str | None = None, update_date_max: datetime | str | None = None,
                       proposal_ids: Iterable[str] | None = None, dataset_ids: Iterable[str] | None = None,
                       instrument_names: Iterable[str] | None = None) -> dict[str, Any]:
        """The ``DatasetInventoriesRequest`` filter fields (no paging) for these arguments."""
        params: dict[str, Any] = {}
        if update_date_min is not None:
            params["updateDateMin"] = format_store_datetime(update_date_min)
        if update_date_max is not None:
            params["updateDateMax"] = format_store_datetime(update_date_max)
        for name, values in (("primaryProposalIds", proposal_ids), ("datasetIds", dataset_ids),
                             ("instrumentNames", instrument_names)):
            if values is not None:
                params[name] = list(values)
        return params

    def dataset_inventories(self, page_size: int, page_number: int,
                            update_date_min: datetime | str | None = None,
                            update_date_max: datetime | str | None = None,
                            proposal_ids: Sequence[str] | None = None, dataset_ids: Sequence[str] | None = None,
                            instrument_names: Sequence[str] | None = None,
                            sort_column: str = "createDate") -> list:
        """One page (``page_number`` is 1-based, as in the schema) of raw dataset records.

        Items are returned exactly as the store sent them (not necessarily dicts). An empty
        id list asks for nothing: ``[]`` without a request. ``sort_column`` is sent
        explicitly; ``createDate`` keeps pages stable while records are being updated.
        """
        if page_size < 1 or page_number < 1:
            raise ValueError("page_size and page_number must be at least 1")
        params = self.dataset_filter(update_date_min, update_date_max, proposal_ids, dataset_ids, instrument_names)
        if any(params.get(k) == [] for k in ("primaryProposalIds", "datasetIds", "instrumentNames")):
            return []
        params.update(pageSize=page_size, pageNumber=page_number, sortColumn=sort_column)
        data = self.query(DATASET_INVENTORIES_QUERY, {"filterParams": params})
        return RecordPage(self._field(data, "datasetInventories", list), finite=getattr(self._answers, "finite", False))

    def iter_dataset_inventory_pages(self, page_size: int = 1000,
                                     update_date_min: datetime | str | None = None,
                                     update_date_max: datetime | str | None = None,
                                     proposal_ids: Sequence[str] | None = None,
                                     dataset_ids: Sequence[str] | None = None,
                                     instrument_names: Sequence[str] | None = None,
                                     sort_column: str = "createDate", start_page: int = 1) -> Iterator[list]:
        """Non-empty pages from ``start_page`` on, until a page shorter than ``page_size``.

        A page holding the same records as an earlier one means the store ignores
        ``pageNumber``: :class:`DoNotRetryError` (paging on would never end).
        """
        page_number = start_page
        seen: dict[str, int] = {}
        while True:
            page = self.dataset_inventories(page_size, page_number, update_date_min, update_date_max,
                                            proposal_ids, dataset_ids, instrument_names, sort_column)
            if page:
                key = _page_key(page)
                if key in seen:
                    raise DoNotRetryError(
                        f"the metadata store answered page {page_number} with the records of page {seen[key]}: "
                        f"it ignores pageNumber", step=self.step,
                        details={"url": self.url, "page": page_number, "same_as": seen[key]})
                seen[key] = page_number
                yield page
            if len(page) < page_size:
                return
            page_number += 1

    def dataset_inventory_count(self, update_date_min: datetime | str | None = None,
                                update_date_max: datetime | str | None = None,
                                proposal_ids: Sequence[str] | None = None,
                                dataset_ids: Sequence[str] | None = None,
                                instrument_names: Sequence[str] | None = None) -> int:
        """How many records match (``datasetInventoriesRecordCount``)."""
        params = self.dataset_filter(update_date_min, update_date_max, proposal_ids, dataset_ids, instrument_names)
        data = self.query(DATASET_INVENTORIES_COUNT_QUERY, {"filterParams": params})
        count = self._field(data, "datasetInventoriesRecordCount", dict).get("recordCount")
        if not isinstance(count, int):
            raise DoNotRetryError(f"metadata store answer: recordCount is {count!r}", step=self.step)
        return count

    # -- experiments
    def experiment_descriptions(self) -> dict[str, str | None]:
        """``{experimentId: experimentDescription}``; items without a string id are skipped."""
        items = self._field(self.query(EXPERIMENT_DESCRIPTIONS_QUERY), "experimentDescriptions", list)
        return {item["experimentId"]: item.get("experimentDescription") for item in items
                if isinstance(item, Mapping) and isinstance(item.get("experimentId"), str)}

    # -- L2 inversions (the schema has no delete mutation for them)
    def create_l2_inversion_inventory(self, params: Mapping[str, Any], *, idempotent: bool = True) -> dict:
        """Register an L2 inversion (``createL2InversionInventory``); returns the stored record.

        With ``idempotent`` (default), when the store refuses the create and already holds
        an inversion with this id and the same input fields (e.g. a retry after a lost
        answer, or a redelivered task), that record is returned instead of an error.
        """
        create = {k: v for k, v in params.items() if k in L2_INVERSION_INPUT_FIELDS}
        unknown = set(params) - set(L2_INVERSION_INPUT_FIELDS)
        if unknown:
            raise ValueError(f"not fields of L2InversionInventory: {sorted(unknown)}")
        try:
            data = self.query(CREATE_L2_INVERSION_MUTATION, {"createParams": create})
        except DoNotRetryError as refused:
            if not idempotent or "graphql_errors" not in refused.details or not create.get("inversionId"):
                raise
            for existing in self.l2_inversions(inversion_id=create["inversionId"]):
                if all(existing.get(k) == create.get(k) for k in L2_INVERSION_INPUT_FIELDS):
                    logger.info("L2 inversion %s already registered with the same fields", create["inversionId"])
                    return existing
            raise
        return self._field(data, "createL2InversionInventory", dict)

    def l2_inversions(self, inversion_id: str | None = None, dataset_ids: Sequence[str] | None = None) -> list[dict]:
        """Registered L2 inversions, optionally by id or by any of ``dataset_ids``."""
        params: dict[str, Any] = {}
        if inversion_id is not None:
            params["inversionId"] = inversion_id
        if dataset_ids is not None:
            params["datasetIds"] = list(dataset_ids)
        data = self.query(L2_INVERSIONS_QUERY, {"filterParams": params} if params else None)
        return self._field(data, "l2Inversions", list)
