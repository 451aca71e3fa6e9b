"""The scan's stage modules: one-way imports, the read-ahead's threads and GIL switch interval
ending with the scan however it ends, and the hand-over between the stages."""
from __future__ import annotations

import ast
import sys
import threading
from pathlib import Path

import pytest

from inversions.errors import BackoffRetryError
from inversions.models import Dataset
from scanning import prepare, store
from scanning.fetch import SWITCH_INTERVAL, read_ahead, switch_interval
from scanning.metadata_store import MetadataStoreClient
from scanning.models import Scan
from scanning.scan import run_scan
from tests.scanning.conftest import TOKEN

SCANNING = Path(__file__).resolve().parents[2] / "scanning"
PROCESS_INTERVAL = 0.004  # what the process runs with in these tests (not the default, not the scan's)


@pytest.fixture(autouse=True)
def process_interval():
    """A switch interval of the process's own; the tests check it is the one after the scan."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(PROCESS_INTERVAL)
    yield
    sys.setswitchinterval(saved)


def interval_is_the_process_own() -> bool:
    return abs(sys.getswitchinterval() - PROCESS_INTERVAL) < 1e-9


def store_client(metadata_store) -> MetadataStoreClient:
    return MetadataStoreClient(metadata_store.url, TOKEN, timeout=5.0, max_attempts=2, backoff_base=0.001)


# --- imports one way: fetch <- prepare <- store <- qualify <- scan ------------------------------
def _scanning_imports(module: str) -> set[str]:
    tree = ast.parse((SCANNING / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):  # also the imports inside functions
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "scanning":
                names |= {alias.name for alias in node.names}
            elif node.module.startswith("scanning."):
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("scanning.")}
    return names


@pytest.mark.parametrize("module, later", [
    ("fetch", {"prepare", "store", "qualify", "scan", "tasks"}),
    ("prepare", {"fetch", "store", "qualify", "scan", "tasks"}),
    ("store", {"fetch", "qualify", "scan", "tasks"}),
    ("qualify", {"fetch", "scan", "tasks"}),
])
def test_a_stage_imports_no_later_stage_nor_the_pipeline(module, later):
    imported = _scanning_imports(module)
    assert imported and not imported & later, (module, imported & later)


# --- the GIL switch interval never outlives the scan -------------------------------------------
def test_the_read_ahead_lowers_the_interval_only_inside_its_block():
    with read_ahead(iter([[1], [2], [3]])) as pages:
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        assert next(pages) == [1]
    # abandoned after one page, the iterator still referenced: the interval is the process's again
    assert interval_is_the_process_own() and pages is not None


def test_a_consumer_that_stops_early_leaves_the_interval_and_no_thread_behind():
    before = {t.name for t in threading.enumerate()}
    with read_ahead(iter([[n] for n in range(10)]), prepare=lambda page: page * 2) as pages:
        for page in pages:
            if page == [1, 1]:
                break
    assert interval_is_the_process_own()
    for thread in threading.enumerate():
        if thread.name.startswith(("scan-read-ahead", "scan-prepare")) and thread.name not in before:
            thread.join(5)
            assert not thread.is_alive(), thread.name


def test_a_failing_prepare_is_raised_at_its_page_and_restores_the_interval():
    def prepare_page(page):
        if page == [2]:
            raise ValueError("cannot prepare")
        return page

    got = []
    with pytest.raises(ValueError, match="cannot prepare") as info:
        with read_ahead(iter([[1], [2], [3]]), prepare=prepare_page) as pages:
            for page in pages:
                got.append(page)
    assert got == [[1]] and info.traceback and interval_is_the_process_own()


def test_overlapping_read_aheads_restore_the_interval_when_the_last_ends():
    with switch_interval(SWITCH_INTERVAL):
        with switch_interval(0.001):
            assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)  # the first still runs
    assert interval_is_the_process_own()


@pytest.mark.django_db
def test_a_store_stage_that_raises_mid_scan_leaves_the_process_interval(metadata_store, settings, monkeypatch):
    """The scan fails on its third page; while the exception (and the frames its traceback
    holds, the read-ahead's among them) is still alive, the interval is the process's."""
    settings.SCAN_PAGE_SIZE = 100
    original, pages = store.upsert_page, []

    def failing(scan, page, *args, **kwargs):
        pages.append(len(page))
        if len(pages) == 3:
            assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)  # lowered while the scan runs
            raise RuntimeError("the database went away")
        return original(scan, page, *args, **kwargs)

    monkeypatch.setattr(store, "upsert_page", failing)
    with pytest.raises(RuntimeError, match="went away") as info:
        run_scan(full=True, store=store_client(metadata_store))
    assert info.value.__traceback__ is not None and interval_is_the_process_own()
    scan = Scan.objects.get()
    assert (scan.status, scan.pages, Dataset.objects.count()) == (Scan.Status.FAILED, 2, 200)  # two pages kept


@pytest.mark.django_db
def test_a_fetch_that_fails_mid_scan_leaves_the_process_interval(metadata_store, settings):
    settings.SCAN_PAGE_SIZE = 100
    client = store_client(metadata_store)
    pages_of = client.iter_dataset_inventory_pages

    def two_pages_then_down(*args, **kwargs):
        for number, page in enumerate(pages_of(*args, **kwargs)):
            if number == 2:
                raise BackoffRetryError("metadata store unavailable", step="scan")
            yield page

    client.iter_dataset_inventory_pages = two_pages_then_down
    scan = run_scan(full=True, store=client)
    assert (scan.status, scan.pages) == (Scan.Status.FAILED, 2) and "unavailable" in scan.error
    assert interval_is_the_process_own()


# --- the hand-over between the stages ----------------------------------------------------------
@pytest.mark.django_db
def test_a_rescan_parses_ahead_only_while_pages_bring_new_records(metadata_store, settings, monkeypatch):
    """First scan: every page parsed ahead. A rescan of an unchanged store: none (an unchanged
    record is not parsed); where the store's pages turn new the preparer starts again."""
    settings.SCAN_PAGE_SIZE = 100
    ahead: list[bool] = []
    plain = prepare.prepare_page
    monkeypatch.setattr(prepare, "prepare_page",
                        lambda page, descriptions=None: ahead.append(descriptions is not None) or plain(page, descriptions))
    first = run_scan(full=True, store=store_client(metadata_store))
    assert first.status == Scan.Status.SUCCEEDED and ahead == [True] * first.pages == [True] * 6
    ahead.clear()
    again = run_scan(store=store_client(metadata_store))
    assert again.status == Scan.Status.SUCCEEDED and again.unchanged == again.records and not any(ahead)

    preparer = prepare.Preparer({}, parse_ahead=False)
    preparer.stored(list(range(100)), 49)
    assert not preparer.parse_ahead
    preparer.stored(list(range(100)), 50)  # half the page new or changed: the next pages are parsed ahead
    assert preparer.parse_ahead and preparer([]).ahead is not None


@pytest.mark.django_db
def test_the_pipeline_hands_each_stage_what_the_one_before_made(metadata_store, settings, monkeypatch):
    """Every page the store stage gets is the one the prepare stage made of the fetched page, in order."""
    settings.SCAN_PAGE_SIZE = 150
    made, stored = [], []
    original_prepare, original_upsert = prepare.prepare_page, store.upsert_page
    monkeypatch.setattr(prepare, "prepare_page", lambda page, d=None: made.append(original_prepare(page, d)) or made[-1])
    monkeypatch.setattr(store, "upsert_page",
                        lambda scan, page, d, memory, prepared: stored.append((page, prepared))
                        or original_upsert(scan, page, d, memory, prepared))
    scan = run_scan(full=True, store=store_client(metadata_store))
    assert scan.status == Scan.Status.SUCCEEDED and scan.records == 508 and len(stored) == scan.pages == 4
    assert [prepared for _, prepared in stored] == made and all(page is prepared.page for page, prepared in stored)
    ids = [raw["datasetId"] for page, _ in stored for raw in page]
    assert len(set(ids)) == 508 and Dataset.objects.count() == 508
    assert interval_is_the_process_own()


def test_the_scan_reports_are_kept_on_disk_and_read_back_by_batch_from_any_thread():
    from concurrent.futures import ThreadPoolExecutor

    from scanning.store import ScanMemory

    memory = ScanMemory()
    try:
        memory.created_many([(pid, pid % 2 == 0, ("invertible", f"r{pid}", f'{{"n": {pid}}}')) for pid in range(1, 5001)])
        memory.touched_again([2, 3])  # a later page added datasets to them: no report, summarised at the end
        assert len(memory.reports) == 4998 and memory.to_summarise == set(range(1, 5001, 2)) | {2}
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(memory.reports.get_many, [range(1, 2501), range(2501, 5002)]))
        assert len(got[0]) == 2498 and len(got[1]) == 2500 and 2 not in got[0]
        assert got[0][1] == ("invertible", "r1", '{"n": 1}')
    finally:
        memory.close()
