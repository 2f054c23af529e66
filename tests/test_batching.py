"""batching.WindowBatcher: windows of requests that come in together share a forward pass, without a model."""

import threading
import time

from batching import WindowBatcher


def _recording_batcher(**kwargs):
    calls = []

    def forward(inputs, batch_size, options, stop):
        calls.append(list(inputs))
        return [x * 10 for x in inputs]

    return WindowBatcher(forward, **kwargs), calls


def test_a_batch_waits_for_a_request_still_in_its_vad():
    batcher, calls = _recording_batcher(wait_s=0.01, arrival_wait_s=5.0)
    results = {}
    vad_done = threading.Event()

    def late_request():
        with batcher.arriving():  # decoding and VAD take longer than the batch window
            vad_done.wait(5)
        results["late"] = batcher.submit("k", [2], 8, {})

    thread = threading.Thread(target=late_request)
    thread.start()
    threading.Timer(0.3, vad_done.set).start()
    results["early"] = batcher.submit("k", [1], 8, {})
    thread.join(5)
    assert results == {"early": [10], "late": [20]}
    assert calls == [[1, 2]]  # one forward pass for both


def test_a_request_that_never_arrives_delays_a_batch_by_at_most_arrival_wait():
    batcher, calls = _recording_batcher(wait_s=0.01, arrival_wait_s=0.2)
    stuck = threading.Event()

    def stuck_request():
        with batcher.arriving():
            stuck.wait(10)

    threading.Thread(target=stuck_request, daemon=True).start()
    time.sleep(0.05)
    started = time.perf_counter()
    assert batcher.submit("k", [1], 8, {}) == [10]
    waited = time.perf_counter() - started
    stuck.set()
    assert 0.15 < waited < 2.0 and calls == [[1]]


def test_without_arrivals_a_batch_starts_after_the_short_window():
    batcher, calls = _recording_batcher(wait_s=0.01, arrival_wait_s=5.0)
    started = time.perf_counter()
    assert batcher.submit("k", [3, 4], 8, {}) == [30, 40]
    assert time.perf_counter() - started < 1.0 and calls == [[3, 4]]


def test_a_cancelled_job_behind_another_leaves_the_queue_and_the_batcher_keeps_serving():
    """Jobs whose inputs are arrays (audio windows) are told apart by identity: removing a cancelled job that is not
    first in the queue once compared arrays and killed the batcher thread."""
    import numpy as np

    from errors import Cancelled

    batcher, calls = _recording_batcher(wait_s=0.2, arrival_wait_s=0.0)
    cancel, results = threading.Event(), {}

    def submit(name, inputs, event=None):
        try:
            results[name] = batcher.submit("k", inputs, 8, {}, event)
        except Cancelled:
            results[name] = "cancelled"

    first = threading.Thread(target=submit, args=("first", [np.ones(3)]))
    second = threading.Thread(target=submit, args=("second", [np.ones(5)], cancel))
    first.start()
    time.sleep(0.02)
    second.start()
    time.sleep(0.02)
    cancel.set()  # given up while waiting behind the first
    first.join(5)
    second.join(5)
    assert results["second"] == "cancelled" and results["first"][0].tolist() == [10, 10, 10]
    assert batcher.submit("k", [np.zeros(2)], 8, {})[0].tolist() == [0, 0]  # still serving
