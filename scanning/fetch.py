"""The scan's first stage: page through the metadata store, ahead of the stage that stores.

:func:`client` is the store client a scan uses; :class:`read_ahead` fetches (and has
prepared) the next pages in threads while the one before is stored. Nothing here touches
the database.

The read-ahead lowers the process-wide GIL switch interval while it runs
(:func:`switch_interval`): it is restored when the ``with`` block ends, however it ends
(a failing stage, a consumer that stops early), and a second read-ahead running meanwhile
in another thread keeps it lowered until the last one ends.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from django.conf import settings

from scanning.metadata_store import MetadataStoreClient

SWITCH_INTERVAL = 0.0005  # seconds: the GIL time slice while pages are read ahead (see read_ahead)


def client() -> MetadataStoreClient:
    return MetadataStoreClient(
        settings.METADATA_STORE_URL,
        settings.METADATA_STORE_TOKEN,
        timeout=(10.0, settings.METADATA_STORE_TIMEOUT),
        max_attempts=settings.METADATA_STORE_MAX_ATTEMPTS,
        backoff_base=settings.METADATA_STORE_BACKOFF_SECONDS,
        deadline=settings.METADATA_STORE_DEADLINE_SECONDS,
        step="scan",
    )


_switch_lock = threading.Lock()
_switch_holders = 0
_switch_saved = 0.0


@contextlib.contextmanager
def switch_interval(seconds: float) -> Iterator[None]:
    """``sys.setswitchinterval`` at most ``seconds`` inside the block, the process's own value again after it.

    Counted: while blocks overlap (two scans in two threads) the value is the lowest asked
    for, and the value from before the first is put back when the last one ends.
    """
    global _switch_holders, _switch_saved
    with _switch_lock:
        if _switch_holders == 0:
            _switch_saved = sys.getswitchinterval()
        _switch_holders += 1
        sys.setswitchinterval(min(sys.getswitchinterval(), seconds))
    try:
        yield
    finally:
        with _switch_lock:
            _switch_holders -= 1
            if _switch_holders == 0:
                sys.setswitchinterval(_switch_saved)


class read_ahead:
    """The same pages in the same order, fetched (in a thread) while the ones before are stored::

        with read_ahead(pages, prepare=prepare_page) as prepared:
            for page in prepared:
                ...

    Requests are sent in the same order as without read-ahead, one at a time, at most two
    pages ahead of the one being stored; a failure to fetch page n+1 is raised when page n+1
    is asked for, after page n was stored. With ``prepare``, ``prepare(page)`` is yielded,
    computed in a second thread as soon as the page has come (work that needs no database):
    page n+1 is prepared while page n+2 is on its way and page n is stored.

    The threads and the lowered switch interval live as long as the ``with`` block: leaving
    it (normally, by an exception, or after a ``break``) cancels what was not started yet
    and restores the interval, whether or not the iterator is still referenced.
    """

    def __init__(self, pages: Iterator[list], prepare: Callable[[list], Any] | None = None):
        self.pages, self.prepare = pages, prepare
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> Iterator[Any]:
        stack = contextlib.ExitStack()
        # The storing thread waits on the database most of the time; when an answer comes it
        # needs the GIL back at once, not after the preparing thread's 5 ms time slice (with
        # ~10 statements a page that wait was a tenth of a full scan).
        stack.enter_context(switch_interval(SWITCH_INTERVAL))
        fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-read-ahead")
        stack.callback(fetcher.shutdown, wait=False, cancel_futures=True)
        preparer = None
        if self.prepare is not None:
            preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-prepare")
            stack.callback(preparer.shutdown, wait=False, cancel_futures=True)
        self._stack = stack
        return self._iterate(fetcher, preparer)

    def __exit__(self, *exc: Any) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def _iterate(self, fetcher: ThreadPoolExecutor, preparer: ThreadPoolExecutor | None) -> Iterator[Any]:
        pages, prepare = self.pages, self.prepare

        def prepared(fetched: Future) -> Any:
            page = fetched.result()
            return page if page is None else prepare(page)

        def ask() -> Future:
            fetched = fetcher.submit(next, pages, None)
            return preparer.submit(prepared, fetched) if preparer is not None else fetched

        pending = deque([ask(), ask()])
        while True:
            page = pending.popleft().result()
            if page is None:
                return
            pending.append(ask())
            yield page
