"""Dynamic micro-batching on one model thread.

Requests are put on a bounded queue (:meth:`MicroBatcher.submit` raises ``queue.Full`` at once when it is full:
the caller answers 503). The model thread takes the first waiting request, then keeps taking requests that arrive
within ``max_wait_ms`` until ``max_batch_size`` inputs are gathered, and runs them as one list (requests that
queued up during the previous forward pass join at once). A request with more inputs than ``max_batch_size`` runs
whole, in several forward passes. Results go back through ``concurrent.futures.Future`` objects, so the asyncio
event loop is never blocked by the model. When the merged run fails (one bad input), each request is run alone, so
only the request at fault gets the error. :meth:`close` lets every queued request finish, then stops the thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

logger = logging.getLogger(__name__)

_STOP = object()


class MicroBatcher:
    """Runs ``run(list_of_jobs) -> list_of_results`` on merged jobs in one thread; a job's size is ``size(job)``.

    ``on_batch(requests, items)`` is called after each merged run (for metrics).
    """

    def __init__(
        self,
        run: Callable[[list], list],
        size: Callable[[object], int],
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_size: int,
        on_batch: Callable[[int, int], None] | None = None,
    ):
        self._run, self._size, self._on_batch = run, size, on_batch
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue_size)
        self._thread = threading.Thread(target=self._loop, name="vlm2vec-serve-model", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        """Requests waiting (not yet taken by the model thread)."""
        return self._queue.qsize()

    def submit(self, job) -> Future:
        """Queue ``job``; its result (or exception) arrives on the returned future. ``queue.Full`` when full."""
        future: Future = Future()
        self._queue.put_nowait((job, future))
        return future

    def close(self) -> None:
        """Finish every queued job, then stop the model thread (blocks until it has)."""
        self._queue.put(_STOP)  # blocks while the queue is full: the thread is draining it
        self._thread.join()

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            jobs, items = [first], self._size(first[0])
            deadline = time.monotonic() + self.max_wait
            while items < self.max_batch_size:
                try:
                    following = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if following is _STOP:
                    stopping = True
                    break
                jobs.append(following)
                items += self._size(following[0])
            self._execute(jobs)
            if self._on_batch is not None:
                self._on_batch(len(jobs), items)

    def _execute(self, jobs: list[tuple[object, Future]]) -> None:
        jobs = [(job, future) for job, future in jobs if future.set_running_or_notify_cancel()]
        if not jobs:
            return
        try:
            results = self._run([job for job, _ in jobs])
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0][1].set_exception(exc)
                return
            for job, future in jobs:  # find the request at fault: each alone
                self._execute_alone(job, future)
            return
        for (_, future), result in zip(jobs, results):
            future.set_result(result)

    def _execute_alone(self, job, future: Future) -> None:
        try:
            future.set_result(self._run([job])[0])
        except Exception as exc:
            future.set_exception(exc)


__all__ = ["MicroBatcher"]
