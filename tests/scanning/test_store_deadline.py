"""The metadata-store client's total deadline, and a store that ignores pageNumber (DESIGN §5)."""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from inversions.errors import BackoffRetryError, DoNotRetryError
from scanning.metadata_store import MetadataStoreClient
from scanning.models import Scan
from scanning.scan import run_scan

ANSWER = json.dumps({"data": {"datasetInventoriesRecordCount": {"recordCount": 7}}}).encode()


class Trickler:
    """A raw TCP store that answers every request one byte every ``every`` seconds: the body
    (``part="body"``, headers at once) or the whole answer, headers included (``part="all"``)."""

    def __init__(self, every: float, part: str):
        self.every, self.part = every, part
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/graphql"
        self.requests = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        self.requests += 1
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(ANSWER)}\r\n"
                        f"\r\n").encode()
                slow = ANSWER if self.part == "body" else head + ANSWER
                if self.part == "body":
                    conn.sendall(head)
                for i in range(len(slow)):
                    if self.stopped.is_set():
                        return
                    conn.sendall(slow[i:i + 1])
                    time.sleep(self.every)
            except OSError:  # the client cut the connection
                return

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()


@pytest.fixture
def trickler() -> Iterator:
    made = []

    def make(every: float = 0.3, part: str = "body") -> Trickler:
        made.append(Trickler(every, part))
        return made[-1]

    yield make
    for server in made:
        server.stop()


@pytest.mark.parametrize("part", ["body", "all"])
def test_an_answer_trickling_in_is_cut_off_at_the_deadline(trickler, part):
    store = trickler(every=0.3, part=part)  # ~60 bytes: about 18 s to send; each byte well within the 5 s read timeout
    client = MetadataStoreClient(store.url, None, timeout=(2.0, 5.0), max_attempts=5, backoff_base=0.01, deadline=2.0)
    began = time.monotonic()
    with pytest.raises(BackoffRetryError, match="deadline of 2 s") as raised:
        client.dataset_inventory_count()
    took = time.monotonic() - began
    print(f"trickling {part}: gave up after {took:.2f} s, {raised.value.details['attempts']} attempt(s)")
    assert took < 3.0  # the deadline, not the ~18 s the answer would take (nor 5 tries of it)
    assert raised.value.details["deadline"] == 2.0 and raised.value.details["attempts"] == 1
    client.close()


def test_without_a_trickle_the_deadline_changes_nothing(metadata_store):
    client = MetadataStoreClient(metadata_store.url, "test-token", timeout=5.0, max_attempts=3, backoff_base=0.001,
                                 deadline=30.0)
    assert client.dataset_inventory_count() == 508
    metadata_store.faults.fail(503, count=1)
    assert client.dataset_inventory_count() == 508 and client.request_count == 3  # a retry within the deadline
    client.close()


def test_retries_stop_at_the_deadline(metadata_store):
    client = MetadataStoreClient(metadata_store.url, "test-token", timeout=5.0, max_attempts=50, backoff_base=0.2,
                                 backoff_max=0.2, deadline=1.0)
    metadata_store.faults.fail(503, count=100)
    began = time.monotonic()
    with pytest.raises(BackoffRetryError, match="deadline of 1 s"):
        client.dataset_inventory_count()
    assert time.monotonic() - began < 1.5 and client.request_count < 50
    client.close()


def test_the_deadline_setting_reaches_the_scans_client(settings):
    from scanning.fetch import client

    settings.METADATA_STORE_DEADLINE_SECONDS = 42.0
    assert client().deadline == 42.0


# --- A store that ignores pageNumber --------------------------------------------------------
def _records(n: int) -> list[dict]:
    return [{"datasetId": f"SAME{i:03d}", "instrumentName": "VISP"} for i in range(n)]


class _SamePage(BaseHTTPRequestHandler):
    """Every datasetInventories request gets the first page, whatever its pageNumber."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "experimentDescriptions" in body["query"]:
            data = {"experimentDescriptions": []}
        else:
            size = body["variables"]["filterParams"]["pageSize"]
            self.server.asked.append(body["variables"]["filterParams"]["pageNumber"])
            data = {"datasetInventories": _records(size)}
        out = json.dumps({"data": data}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def same_page_store() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SamePage)
    server.daemon_threads, server.block_on_close = True, False  # no waiting for the client's kept-alive connection
    server.asked = []
    server.url = f"http://127.0.0.1:{server.server_address[1]}/graphql"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_store_answering_the_same_page_again_is_detected(same_page_store):
    client = MetadataStoreClient(same_page_store.url, None, timeout=5.0, deadline=10.0)
    pages = client.iter_dataset_inventory_pages(page_size=5)
    assert [r["datasetId"] for r in next(pages)] == [f"SAME{i:03d}" for i in range(5)]
    with pytest.raises(DoNotRetryError, match="answered page 2 with the records of page 1: it ignores pageNumber"):
        next(pages)
    assert same_page_store.asked == [1, 2]
    client.close()


@pytest.mark.django_db
def test_a_scan_of_a_store_ignoring_pagenumber_fails_with_that_reason(same_page_store, settings):
    settings.SCAN_PAGE_SIZE = 5
    client = MetadataStoreClient(same_page_store.url, None, timeout=5.0, max_attempts=1, deadline=10.0)
    began = time.monotonic()
    scan = run_scan(store=client, full=True)
    assert scan.status == Scan.Status.FAILED and "ignores pageNumber" in scan.error
    assert scan.pages == 1 and scan.records == 5  # what it stored of page 1 stands
    assert same_page_store.asked[:2] == [1, 2] and len(same_page_store.asked) <= 3  # read ahead at most one more
    assert time.monotonic() - began < 10
