"""batching.WindowBatcher: windows of requests that come in together share a forward pass, without a model.
Synchronised by events and the batcher's queue, never by sleeping: a loaded machine only makes them slower."""

import threading
import time

from errors import Cancelled

from batching import WindowBatcher


def _recording_batcher(**kwargs):
    calls = []

    def forward(inputs, batch_size, options, stop):
        calls.append(list(inputs))
        return [x * 10 for x in inputs]

    return WindowBatcher(forward, **kwargs), calls


def _until(condition, timeout=60.0):
    """Wait for a condition another thread brings about (a generous bound: it only stops a hung test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never came true"
        time.sleep(0.001)


def _submit_in_thread(batcher, results, name, *args):
    thread = threading.Thread(target=lambda: results.__setitem__(name, _outcome(batcher.submit, *args)))
    thread.start()
    return thread


def _outcome(call, *args):
    try:
        return call(*args)
    except Exception as error:  # the test asserts on it
        return error


def test_a_batch_waits_for_a_request_still_in_its_vad():
    batcher, calls = _recording_batcher(wait_s=0.01, arrival_wait_s=60.0)
    results = {}
    in_vad, vad_done = threading.Event(), threading.Event()

    def late_request():
        with batcher.arriving():  # decoding and VAD take longer than the batch window
            in_vad.set()
            vad_done.wait(60)
        results["late"] = batcher.submit("k", [2], 8, {})

    late = threading.Thread(target=late_request)
    late.start()
    assert in_vad.wait(60)
    early = _submit_in_thread(batcher, results, "early", "k", [1], 8, {})
    _until(lambda: batcher._queue)  # the early request is queued, its batch waiting for the late one
    vad_done.set()
    early.join(60), late.join(60)
    assert results == {"early": [10], "late": [20]}
    assert calls == [[1, 2]]  # one forward pass for both


def test_a_request_that_never_arrives_delays_a_batch_by_at_most_arrival_wait():
    batcher, calls = _recording_batcher(wait_s=0.01, arrival_wait_s=0.2)
    entered, stuck = threading.Event(), threading.Event()

    def stuck_request():
        with batcher.arriving():
            entered.set()
            stuck.wait(600)

    threading.Thread(target=stuck_request, daemon=True).start()
    assert entered.wait(60)
    started = time.monotonic()
    assert batcher.submit("k", [1], 8, {}) == [10]
    assert time.monotonic() - started >= 0.2  # it did wait for the announced request...
    assert not stuck.is_set() and calls == [[1]]  # ...and ran without it, while it is still on its way
    stuck.set()


def test_without_arrivals_a_batch_does_not_wait_for_arrivals():
    batcher, calls = _recording_batcher(wait_s=0.01, arrival_wait_s=600.0)  # waiting for arrivals would hang it
    results = {}
    _submit_in_thread(batcher, results, "only", "k", [3, 4], 8, {}).join(120)
    assert results == {"only": [30, 40]} and calls == [[3, 4]]


def _gated_batcher(**kwargs):
    """A batcher whose forward blocks until `release` is set, recording (inputs, batch_size) of each pass."""
    calls, running, release = [], threading.Event(), threading.Event()

    def forward(inputs, batch_size, options, stop):
        calls.append((list(inputs), batch_size))
        running.set()
        release.wait(60)
        return [x * 10 for x in inputs]

    return WindowBatcher(forward, **kwargs), calls, running, release


def test_each_request_gets_its_own_batch_size():
    """Jobs asking for different batch sizes never share a pass, where the first one's size would win."""
    batcher, calls, running, release = _gated_batcher(wait_s=0.01, arrival_wait_s=0.0)
    results = {}
    first = _submit_in_thread(batcher, results, "blocker", "k", [0], 8, {})
    assert running.wait(60)  # the batcher is busy: the next three queue up together
    threads = [_submit_in_thread(batcher, results, name, "k", inputs, size, {})
               for name, inputs, size in (("a", [1, 2], 1), ("b", [3], 4), ("c", [4], 1))]
    _until(lambda: len(batcher._queue) == 3)
    release.set()
    for thread in [first, *threads]:
        thread.join(60)
    assert results == {"blocker": [0], "a": [10, 20], "b": [30], "c": [40]}
    assert sorted(calls[1:]) == [([1], 1), ([2], 1), ([3], 4), ([4], 1)]  # never more windows than asked for


def test_a_job_taken_past_one_left_in_the_queue_keeps_the_batcher_alive():
    """Windows are numpy arrays: taking a job from behind one that stays queued (another batch size, or over the
    limit) once killed the batcher thread (`list.remove` compared their arrays) and hung every request after it."""
    import numpy as np

    batcher, calls, running, release = _gated_batcher(wait_s=0.01, arrival_wait_s=0.0)
    results = {}
    window = [np.zeros(4), np.ones(4)]
    blocker = _submit_in_thread(batcher, results, "blocker", "k", [np.zeros(2)], 8, {})
    assert running.wait(60)
    threads = []
    for name, size in (("a", 8), ("b", 1), ("c", 8)):  # c joins a's batch past b, which waits for the next
        threads.append(_submit_in_thread(batcher, results, name, "k", [x.copy() for x in window], size, {}))
        _until(lambda: len(batcher._queue) == len(threads))
    release.set()
    for thread in [blocker, *threads]:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "the batcher died: requests hang"
    assert [size for _, size in calls] == [8, 8, 1, 1] and len(calls[1][0]) == 4  # a and c, then b one by one
    assert all(np.array_equal(out, x * 10) for name in "abc" for out, x in zip(results[name], window))


def test_a_cancelled_job_leaves_the_queue_and_its_batch_mate_gets_its_whole_output():
    passes, gates, stops = [], [threading.Event(), threading.Event()], []

    def forward(inputs, batch_size, options, stop):
        passes.append(list(inputs))
        gates[len(passes) - 1].wait(60)
        stops.append(stop())  # asked at the end of the pass, after one of its jobs gave up
        return [x * 10 for x in inputs]

    batcher = WindowBatcher(forward, wait_s=0.01, arrival_wait_s=0.0)
    results = {}
    blocker = _submit_in_thread(batcher, results, "blocker", "k", [0], 8, {})
    _until(lambda: passes)
    cancel_queued, cancel_shared = threading.Event(), threading.Event()
    queued = _submit_in_thread(batcher, results, "queued", "other", [5, 6], 8, {}, cancel_queued)
    shared = _submit_in_thread(batcher, results, "shared", "k", [1], 8, {}, cancel_shared)
    live = _submit_in_thread(batcher, results, "live", "k", [2, 3], 8, {})
    _until(lambda: len(batcher._queue) == 3)
    cancel_queued.set()  # given up while queued: its windows must never reach the model
    gates[0].set()
    _until(lambda: len(passes) == 2)  # "shared" and "live" in one pass
    cancel_shared.set()  # given up while its pass runs
    gates[1].set()
    for thread in (blocker, queued, shared, live):
        thread.join(60)
    assert passes == [[0], [1, 2, 3]]  # the cancelled queued job's windows never ran
    assert isinstance(results["queued"], Cancelled) and isinstance(results["shared"], Cancelled)
    assert results["live"] == [20, 30] and results["blocker"] == [0]  # complete, although its mate gave up
    assert stops == [False, False]  # with a live job in the pass, the pass was never told to stop
