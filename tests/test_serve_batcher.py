"""The micro-batcher alone (no model): merging up to max_batch_size, a full queue, a failing request isolated,
close() answering every queued job, waiting for requests being prepared."""

import queue
import threading
import time

import pytest

from modeling_vlm2vec.serve.batcher import MicroBatcher


class Recorder:
    """``run`` for the batcher: records each merged call; refuses jobs named "bad"; the first call waits for
    ``gate`` so that jobs pile up in the queue meanwhile."""

    def __init__(self):
        self.calls, self.gate = [], threading.Event()

    def __call__(self, jobs):
        assert self.gate.wait(30)
        self.calls.append(list(jobs))
        if any(job[0] == "bad" for job in jobs):
            raise ValueError("bad input")
        return [f"done {job[0]}" for job in jobs]


def _batcher(run, **kwargs):
    settings = {"max_batch_size": 4, "max_wait_ms": 0, "max_queue_size": 10, **kwargs}
    return MicroBatcher(run, len, **settings)


def test_queued_jobs_are_merged_up_to_max_batch_size_in_order():
    run = Recorder()
    batcher = _batcher(run)
    first = batcher.submit(["a"])  # taken by the thread, which then waits for the gate
    while batcher.depth():
        threading.Event().wait(0.01)
    jobs = [["b", "b2"], ["c"], ["d"], ["e", "e2", "e3"]]
    futures = [batcher.submit(job) for job in jobs]
    run.gate.set()
    assert first.result(30) == "done a"
    assert [f.result(30) for f in futures] == ["done b", "done c", "done d", "done e"]
    batcher.close()
    # the first call alone; then b, c, d fill 4 inputs; e (3 inputs) in the next
    assert run.calls == [[["a"]], [["b", "b2"], ["c"], ["d"]], [["e", "e2", "e3"]]]


def test_a_failing_job_fails_alone_and_a_full_queue_refuses_at_once():
    run = Recorder()
    batcher = _batcher(run, max_queue_size=3)
    first = batcher.submit(["a"])
    while batcher.depth():
        threading.Event().wait(0.01)
    futures = [batcher.submit([name]) for name in ("x", "bad", "y")]
    with pytest.raises(queue.Full):
        batcher.submit(["z"])
    run.gate.set()
    assert first.result(30) == "done a"
    assert futures[0].result(30) == "done x" and futures[2].result(30) == "done y"
    with pytest.raises(ValueError, match="bad input"):
        futures[1].result(30)
    batcher.close()


def test_close_answers_every_queued_job_first():
    run = Recorder()
    batcher = _batcher(run, max_batch_size=1)
    futures = [batcher.submit([f"j{i}"]) for i in range(5)]
    closing = threading.Thread(target=batcher.close)
    closing.start()
    run.gate.set()
    closing.join(30)
    assert not closing.is_alive()
    assert [f.result(0) for f in futures] == [f"done j{i}" for i in range(5)]
    with pytest.raises(RuntimeError, match="shutting down"):  # the server answers 503
        batcher.submit(["late"])


def test_a_batch_waits_past_max_wait_for_a_request_being_prepared():
    run = Recorder()
    run.gate.set()
    batcher = _batcher(run, max_wait_ms=50)  # 50 ms for new requests, up to 500 ms for requests being prepared
    with batcher.preparing():  # "b" is being prepared when "a" arrives, and takes 300 ms
        first = batcher.submit(["a"])
        threading.Event().wait(0.3)
        second = batcher.submit(["b"])
    assert (first.result(30), second.result(30)) == ("done a", "done b")
    # without a request in preparation, the same gap splits the batch (50 ms of waiting, then "a" runs alone)
    third = batcher.submit(["c"])
    threading.Event().wait(0.3)
    fourth = batcher.submit(["d"])
    assert (third.result(30), fourth.result(30)) == ("done c", "done d")
    batcher.close()
    assert run.calls == [[["a"], ["b"]], [["c"]], [["d"]]]


def test_a_request_stuck_in_preparation_holds_a_batch_ten_times_max_wait_at_most():
    run = Recorder()
    run.gate.set()
    batcher = _batcher(run, max_wait_ms=20)
    with batcher.preparing():  # never submits
        start = time.monotonic()
        future = batcher.submit(["a"])
        assert future.result(5) == "done a"  # ran while the other request was still being prepared
        assert time.monotonic() - start >= 0.2 * 0.95  # after ten times max_wait, not after max_wait
    batcher.close()
    assert run.calls == [[["a"]]]
