"""Dynamic micro-batching on one model thread.

Requests are put on a bounded queue (:meth:`MicroBatcher.submit` raises ``queue.Full`` at once when it is full:
the caller answers 503). A merged batch opens when the model thread is free and a request waits; it closes (and
runs as one list) as soon as it holds ``max_batch_size`` inputs, or once ``max_wait_ms`` have passed since it
opened and no request is being prepared. Requests being prepared are those between :meth:`MicroBatcher.preparing`
and their :meth:`~MicroBatcher.submit` (the server reads, renders and decodes a request there): they are already
here and about to join, so the batch waits for them — up to ``PREPARING_WAIT_FACTOR * max_wait_ms`` in all — rather
than running without them. When many clients send at once (each one after its previous answer came back), their
requests arrive together but are prepared one after the other; without that wait the first few would run as a small
batch and the rest as another, and a forward of few rows costs nearly as much as one of many on a CPU.

Requests join in arrival order while the batch holds fewer than ``max_batch_size`` inputs (a request with more runs
whole, in several forward passes). Results go back through ``concurrent.futures.Future`` objects, so the asyncio
event loop is never blocked by the model. When the merged run fails (one bad input), each request is run alone, so
only the request at fault gets the error. :meth:`close` lets every queued request finish, then stops the thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager

#: How much longer than ``max_wait_ms`` a batch may wait for requests that are being prepared.
PREPARING_WAIT_FACTOR = 10


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
        self.max_batch_size, self.max_wait, self.max_queue_size = max_batch_size, max_wait_ms / 1000, max_queue_size
        self._waiting: deque[tuple[object, Future, int]] = deque()  # (job, future, size)
        self._waiting_items = 0
        self._preparing = 0
        self._stopping = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="vlm2vec-serve-model", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        """Requests waiting (not yet taken by the model thread)."""
        return len(self._waiting)

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Marks a request as being prepared until the block ends (it submits inside the block, or fails)."""
        with self._changed:
            self._preparing += 1
        try:
            yield
        finally:
            with self._changed:
                self._preparing -= 1
                self._changed.notify()

    def submit(self, job) -> Future:
        """Queue ``job``; its result (or exception) arrives on the returned future. ``queue.Full`` when full;
        ``RuntimeError`` after :meth:`close`."""
        future: Future = Future()
        size = self._size(job)
        with self._changed:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            if len(self._waiting) >= self.max_queue_size:
                raise queue.Full
            self._waiting.append((job, future, size))
            self._waiting_items += size
            self._changed.notify()
        return future

    def close(self) -> None:
        """Finish every queued job, then stop the model thread (blocks until it has)."""
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            self._execute([(job, future) for job, future, _ in jobs])
            if self._on_batch is not None:
                self._on_batch(len(jobs), sum(size for _, _, size in jobs))

    def _next_batch(self) -> list[tuple[object, Future, int]] | None:
        """The jobs of the next merged run, taken off the queue when the batch closes (None: stopped, queue empty)."""
        with self._changed:
            while not self._waiting:
                if self._stopping:
                    return None
                self._changed.wait()
            opened = time.monotonic()
            while self._waiting_items < self.max_batch_size and not self._stopping:
                limit = self.max_wait * (PREPARING_WAIT_FACTOR if self._preparing else 1)
                remaining = opened + limit - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            jobs, items = [], 0
            while self._waiting and items < self.max_batch_size:
                job = self._waiting.popleft()
                jobs.append(job)
                items += job[2]
            self._waiting_items -= items
            return jobs

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


__all__ = ["PREPARING_WAIT_FACTOR", "MicroBatcher"]
