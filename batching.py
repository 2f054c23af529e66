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


@dataclass(eq=False)  # compared by identity: queue.remove() must never compare inputs (numpy arrays raise)
class _Job:
    key: Hashable
    inputs: list[Any]
    batch_size: int
    options: dict[str, Any]
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    sent: int = 0  # windows handed to forward passes so far
    finished: int = 0  # windows whose outputs are in `result`


class WindowBatcher:
    """Collects jobs for `wait_s` after the first arrives, and for up to `arrival_wait_s` more while requests
    announced through `arriving()` are still on their way (decoding, VAD), then runs compatible ones in one
    `forward` call of at most the first job's `batch_size` windows.

    A job with more windows than that goes to the back of the queue after each batch (a short request behind a long
    one joins the next batch), and between batches a cancelled job leaves with its remaining windows dropped: a
    timed-out or disconnected request frees the model within one batch."""

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
        Once `cancel` is set the job leaves the queue before its next batch, or its batch stops early if no other
        job needs it, and `Cancelled` is raised."""
        if not inputs:
            return []
        job = _Job(key, inputs, batch_size, options, cancel or threading.Event(), result=[None] * len(inputs))
        with self._ready:
            self._queue.append(job)
            self._ready.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _take(self) -> list[tuple[_Job, int, int]]:
        """The next batch: (job, first window, end) slices of compatible jobs, oldest first."""
        with self._ready:
            while not self._queue:
                self._ready.wait()
        time.sleep(self._wait_s)  # let requests that arrive together join the batch
        deadline = time.monotonic() + self.arrival_wait_s
        with self._ready:
            # requests that came in together but are still in VAD would otherwise miss this batch by milliseconds
            while self._arriving and sum(len(job.inputs) - job.sent for job in self._queue) < self._max_windows:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            for job in [job for job in self._queue if job.cancel.is_set()]:  # given up: no more work for it
                self._finish(job, Cancelled())
            if not self._queue:
                return []
            first = self._queue[0]
            room = max(1, min(first.batch_size, self._max_windows))
            taken: list[tuple[_Job, int, int]] = []
            # a job's batch_size is its own (a client's memory bound): only equal ones share a pass
            for job in [job for job in self._queue if (job.key, job.batch_size) == (first.key, first.batch_size)]:
                count = min(len(job.inputs) - job.sent, room)
                if count <= 0:
                    break
                taken.append((job, job.sent, job.sent + count))
                job.sent += count
                room -= count
                self._queue.remove(job)
                if job.sent < len(job.inputs):
                    self._queue.append(job)  # its next windows wait behind the jobs that waited for this batch
        return taken

    def _finish(self, job: _Job, error: BaseException | None = None) -> None:
        """Hand a job its outcome (call with `_ready` held)."""
        if job.done.is_set():
            return
        if job in self._queue:
            self._queue.remove(job)
        job.error = error
        job.done.set()

    def _serve(self) -> None:
        while True:
            taken = self._take()
            if not taken:
                continue
            jobs = [job for job, _, _ in taken]
            try:
                outputs = self._forward([x for job, start, end in taken for x in job.inputs[start:end]],
                                        jobs[0].batch_size, jobs[0].options,
                                        lambda: all(job.cancel.is_set() for job in jobs))
                errors: list[BaseException | None] = []
                offset = 0
                for job, start, end in taken:
                    job.result[start:end] = outputs[offset:offset + end - start]
                    offset += end - start
                    job.finished += end - start
                    # the batch may have stopped early: a cancelled job's output is not its transcript
                    errors.append(Cancelled() if job.cancel.is_set() else None)
            except BaseException as error:  # every waiting request hears about it; the thread keeps serving
                errors = [error] * len(taken)
            with self._ready:
                for (job, _, _), error in zip(taken, errors):
                    if error is not None or job.finished == len(job.inputs):
                        self._finish(job, error)
