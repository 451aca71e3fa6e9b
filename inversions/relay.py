"""Waking the outbox relay after a commit, without a broker round trip in the request (DESIGN §10).

The life-cycle calls its outbox hook after each commit that wrote events
(:func:`inversions.lifecycle.on_outbox_commit`; registered in ``inversions.apps``). The hook,
:func:`wake`, only sets a flag; a daemon thread of the process (started on first use, again
after a fork) sees it and sends one ``inversions.relay_events`` task to the broker for all
the commits since its last send, then pauses ``EVENT_RELAY_KICK_SECONDS`` so that a burst of
commits costs a few messages, not one each. The relay task publishes every unsent outbox row.

Delivery stays at least once whatever happens to a kick: the rows are in the outbox from the
commit on, and beat runs the same relay every ``EVENT_RELAY_INTERVAL_SECONDS``. A kick lost
(the broker down, the process exiting before its thread sent it) delays events, never drops
them.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def send_relay_task() -> None:
    """One relay task to the workers (a broker round trip: on the waker's thread only)."""
    from inversions.tasks import relay_events

    relay_events.apply_async(retry=False, ignore_result=True)


class RelayWaker:
    """Coalesces wake-ups into calls of ``send`` on a thread of its own."""

    def __init__(self, send: Callable[[], None], pause: Callable[[], float]):
        self._send, self._pause = send, pause
        self._lock = threading.Lock()
        self._pending = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self.sent = 0  # sends made (tests, diagnostics)

    def wake(self) -> None:
        """Ask for a send soon; returns at once (no I/O, no waiting)."""
        thread = self._thread
        if thread is None or self._pid != os.getpid() or not thread.is_alive():
            self._start()
        self._pending.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            if self._pid != os.getpid():  # a forked child: the parent's thread is not here
                self._pending = threading.Event()
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="l2-relay-waker", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        pending = self._pending
        while True:
            pending.wait()
            pending.clear()
            try:
                self._send()
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - beat relays anyway; the next wake tries again
                log.warning("could not ask for an outbox relay (beat relays it later): %s: %s",
                            type(exc).__name__, exc)
            time.sleep(max(0.0, self._pause()))


def _kick_pause() -> float:
    from django.conf import settings

    return float(settings.EVENT_RELAY_KICK_SECONDS)


waker = RelayWaker(send_relay_task, _kick_pause)


def wake() -> None:
    """The life-cycle's outbox hook: a relay soon, without waiting for the broker."""
    waker.wake()
