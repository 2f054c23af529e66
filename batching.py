"""Dynamic batching: speech windows of requests that arrive together share one forward pass.

On a CPU the decoder's small matrix products leave most of the hardware idle for one sequence; eight
windows decoded together cost little more than one. Requests whose decoding options differ never mix.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from errors import Cancelled

# forward(inputs, batch_size, options, stop): `stop()` turns true once every request in the batch was cancelled
Forward = Callable[[list[Any], int, dict[str, Any], Callable[[], bool]], list[Any]]


@dataclass(eq=False)  # jobs are compared by identity: their inputs hold arrays
class _Job:
    key: Hashable
    inputs: list[Any]
    batch_size: int
    options: dict[str, Any]
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: list[Any] | None = None
    error: BaseException | None = None


class WindowBatcher:
    """Collects jobs for `wait_s` after the first arrives, and for up to `arrival_wait_s` more while requests
    announced through `arriving()` are still on their way (decoding, VAD), then runs compatible ones in one
    `forward` call."""

    def __init__(self, forward: Forward, wait_s: float = 0.02, max_windows: int = 32, arrival_wait_s: float = 0.3):
        self._forward, self._wait_s, self._max_windows = forward, wait_s, max_windows
        self.arrival_wait_s = arrival_wait_s
        self._arriving = 0  # requests inside `arriving()`: their windows are coming
        self._queue: list[_Job] = []
        self._ready = threading.Condition()
        threading.Thread(target=self._serve, name="window-batcher", daemon=True).start()

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Wrap a request's work before `submit`: a batch about to start waits for it (up to `arrival_wait_s`)."""
        with self._ready:
            self._arriving += 1
        try:
            yield
        finally:
            with self._ready:
                self._arriving -= 1
                self._ready.notify()

    def submit(self, key: Hashable, inputs: list[Any], batch_size: int, options: dict[str, Any],
               cancel: threading.Event | None = None) -> list[Any]:
        """Blocks until the job's outputs (one per input, in order) are ready; re-raises the forward's error.
        Once `cancel` is set the job leaves the queue, or its batch stops early if no other job needs it."""
        job = _Job(key, inputs, batch_size, options, cancel or threading.Event())
        with self._ready:
            self._queue.append(job)
            self._ready.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _take(self) -> list[_Job]:
        with self._ready:
            while not self._queue:
                self._ready.wait()
        time.sleep(self._wait_s)  # let requests that arrive together join the batch
        deadline = time.monotonic() + self.arrival_wait_s
        with self._ready:
            # requests that came in together but are still in VAD would otherwise miss this batch by milliseconds
            while self._arriving and sum(len(job.inputs) for job in self._queue) < self._max_windows:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            for job in [job for job in self._queue if job.cancel.is_set()]:  # given up while waiting: no work
                self._queue.remove(job)
                job.error = Cancelled()
                job.done.set()
            if not self._queue:
                return []
            first = self._queue[0]
            limit = max(len(first.inputs), min(first.batch_size * 4, self._max_windows))
            taken, total = [], 0
            for job in self._queue:
                if job.key == first.key and (not taken or total + len(job.inputs) <= limit):
                    taken.append(job)
                    total += len(job.inputs)
            for job in taken:
                self._queue.remove(job)
        return taken

    def _serve(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                continue
            try:
                outputs = self._forward([x for job in jobs for x in job.inputs], jobs[0].batch_size, jobs[0].options,
                                        lambda: all(job.cancel.is_set() for job in jobs))
                start = 0
                for job in jobs:
                    job.result, start = outputs[start:start + len(job.inputs)], start + len(job.inputs)
                    if job.cancel.is_set():  # the batch may have stopped early: its output is not the transcript
                        job.error = Cancelled()
            except BaseException as error:  # every waiting request hears about it; the thread keeps serving
                for job in jobs:
                    job.error = error
            finally:
                for job in jobs:
                    job.done.set()
