"""A durable event queue: events handed in order to one handler by one background thread,
so a tracking server that is slow or down never blocks the sweep. A failed call is retried
with backoff (1 s doubling to 10 s), in order, never dropped; whatever is still queued at
`close` is appended to a pending file (JSON lines) that the next queue on the same file
replays first (the sweep's next `--resume`).

The thread takes every event waiting (up to `max_batch`) at once and hands them to the
handler as one list, which removes each event from its front once it is done: a handler may
then store many events in one call (MLflow's `log_batch` takes a run's rows together), and
after a failure only the events not yet done are retried.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from rp_tune.core import storage

log = logging.getLogger(__name__)


class DurableQueue:
    """Events (JSON-able dicts) to `handle_batch`, in order, in lists of what is waiting,
    retried until done. `handle_batch(events)` removes each event from the front of the list
    once it is done; on an exception the events left are retried."""

    def __init__(
        self,
        handle_batch: Callable[[list[dict[str, Any]]], None],
        pending_path: str | None,
        what: str,
        max_batch: int = 1000,
    ) -> None:
        self._handle = handle_batch
        self.max_batch = max_batch
        self.pending_path = pending_path  # None: nowhere to persist (events die with us)
        self.what = what  # "MLflow at <uri>": in the warnings
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._busy = threading.Event()
        self._current: list[dict[str, Any]] = []  # the batch in hand: what is not done yet
        self._stop = False
        self.failures = 0
        for event in self._load_pending():
            self._queue.put(event)
        self._thread = threading.Thread(target=self._drain, name="mlflow-tracker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, event: dict[str, Any]) -> None:
        self._queue.put(event)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to timeout_s until every event handed in so far is done; whether it is."""
        deadline = time.monotonic() + timeout_s
        while not self._queue.empty() or self._busy.is_set():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 120.0) -> int:
        """Wait up to timeout_s for the queue to drain; persist what is left. Returns its count."""
        self.wait_idle(timeout_s)
        left = []
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            if event is not None:
                left.append(event)
        if self._busy.is_set():
            left[:0] = list(self._current)
        self._stop = True
        self._save_pending(left)
        if left:
            log.warning(
                "%s unreachable: %d tracking events saved to %s; they are "
                "replayed by the next --resume",
                self.what,
                len(left),
                self.pending_path,
            )
        return len(left)

    def _drain(self) -> None:
        delay = 1.0
        while not self._stop:
            try:
                event = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if event is None:
                return
            batch = [event]
            self._current = batch  # what `close` saves if it cannot wait for it
            self._busy.set()
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is not None:
                    batch.append(more)
            while not self._stop and batch:
                try:
                    self._handle(batch)  # removes what it did from the front of `batch`
                    delay = 1.0
                except Exception as e:  # server down, slow, or refusing: retry, never drop
                    self.failures += 1
                    log.warning(
                        "MLflow tracking call failed (%s: %s); retrying in %.0fs",
                        type(e).__name__,
                        str(e).splitlines()[0][:200],
                        delay,
                    )
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)
            self._busy.clear()
            self._current = []

    def _load_pending(self) -> list[dict[str, Any]]:
        path = self.pending_path
        if path is None or not storage.exists(path):
            return []
        text = storage.read_text(path)
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
        storage.delete(path)
        log.info("replaying %d MLflow events saved by an earlier run", len(events))
        return events

    def _save_pending(self, events: list[dict[str, Any]]) -> None:
        path = self.pending_path
        if path is None or not events:
            return
        storage.append_text(path, "".join(json.dumps(e) + "\n" for e in events))
