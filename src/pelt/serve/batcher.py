"""Dynamic batching: the inputs of requests of any mix of tasks gathered into one mixed-task forward pass.

One worker thread owns the model. Every input of every request waits in a backlog; the oldest one starts the
next batch and waits for company until `max_batch_size` inputs are waiting or `max_wait_s` has passed since it
arrived. The batch is then the oldest input and the waiting inputs closest to it in length, up to
`max_batch_size` (a batch is padded to its longest input, so like lengths together are what makes a server as
fast as a sorted file); it runs as one `MultiTaskModel.predict` call, tasks mixed per row. A request is answered
once all its inputs are. The oldest input always goes first, so none waits behind an endless stream of
better-fitting ones. Changes to the set of tasks (loading, unloading an adapter) run on the same thread between
batches: a forward pass never sees a half-added task, and no lock is needed around the model.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from pelt.errors import PeltError

__all__ = ["Answers", "Batcher", "PredictJob"]


class Answers(Future):
    """A request's future; `abandon()` (its client stopped waiting) drops the inputs not computed yet."""

    abandoned = False

    def abandon(self) -> None:
        self.abandoned = True
        self.cancel()  # not yet taken: never computed


@dataclass(eq=False)
class PredictJob:
    """One request: its task, its inputs, and where its answers go (all of them, in order, or one error)."""

    task: str
    inputs: Sequence[Mapping[str, Any]]
    future: Answers = field(default_factory=Answers)
    arrived: float = field(default_factory=time.monotonic)
    answers: list[Any] = field(default_factory=list, repr=False)
    remaining: int = 0
    started: bool | None = None  # None: not yet taken; then whether it still wants its answers

    def __post_init__(self) -> None:
        self.answers = [None] * len(self.inputs)
        self.remaining = len(self.inputs)

    def take(self) -> bool:
        """Whether its answers are still wanted (not cancelled by a time-out), asked once."""
        if self.started is None:
            self.started = self.future.set_running_or_notify_cancel()
        return self.started


@dataclass(eq=False)
class _Input:
    job: PredictJob
    index: int
    length: int  # in characters: what batches inputs of like lengths

    @property
    def example(self) -> Mapping[str, Any]:
        return self.job.inputs[self.index]


@dataclass
class _Exclusive:
    """A change to the model, run alone between batches."""

    run: Callable[[], Any]
    future: Future = field(default_factory=Future)


_STOP = object()


class Batcher:
    """The worker thread and its queue. `run_batch([(task, input), ...])` answers a gathered batch: an answer or
    an exception per input; it runs on the worker only."""

    def __init__(self, run_batch: Callable[[list[tuple[str, Mapping[str, Any]]]], list[Any]], *,
                 max_batch_size: int, max_wait_s: float, on_batch: Callable[[int, float], None] | None = None
                 ) -> None:
        self.run_batch, self.max_batch_size, self.max_wait_s = run_batch, max_batch_size, max_wait_s
        self.on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="pelt-batcher", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise _stopping()

    def submit(self, job: PredictJob) -> Future:
        self._check_open()
        if not job.inputs:
            job.future.set_result([])
        else:
            self._queue.put(job)
        return job.future

    def exclusive(self, run: Callable[[], Any]) -> Future:
        """Run `run()` on the worker between two batches (its result or error through the future)."""
        self._check_open()
        item = _Exclusive(run)
        self._queue.put(item)
        return item.future

    def close(self, timeout: float = 10.0) -> None:
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _loop(self) -> None:
        backlog: list[_Input] = []  # oldest first
        carried: Any = None  # a change or the stop, taken from the queue while gathering
        while True:
            if carried is None and not backlog:
                carried = self._queue.get()
            if isinstance(carried, PredictJob):
                backlog += _inputs(carried)
                carried = None
            if carried is _STOP:
                for unit in backlog:
                    _fail(unit.job, _stopping())
                while True:  # what came after the stop: refused, not left waiting
                    try:
                        late = self._queue.get_nowait()
                    except queue.Empty:
                        return
                    if isinstance(late, PredictJob):
                        _fail(late, _stopping())
                    elif isinstance(late, _Exclusive) and late.future.set_running_or_notify_cancel():
                        late.future.set_exception(_stopping())
            if isinstance(carried, _Exclusive) and not backlog:
                _settle(carried.future, carried.run)
                carried = None
                continue
            if carried is None:
                carried = self._gather(backlog)
            batch = self._choose(backlog)
            if batch:
                self._answer(batch)

    def _gather(self, backlog: list[_Input]) -> Any:
        """Take waiting requests into the backlog until a batch is full or the oldest input has waited long
        enough; a change or the stop met on the way is returned, to run after this batch."""
        while True:
            full = len(backlog) >= self.max_batch_size
            wait = 0.0 if full else backlog[0].job.arrived + self.max_wait_s - time.monotonic()
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                return None
            if not isinstance(item, PredictJob):
                return item
            backlog += _inputs(item)

    def _choose(self, backlog: list[_Input]) -> list[_Input]:
        """The oldest input and the waiting ones nearest it in length, up to a batch (taken off the backlog);
        inputs of requests that timed out are dropped."""
        for unit in backlog:
            future = unit.job.future
            if future.abandoned and future.running():  # taken, then abandoned: finished, for no one
                future.set_exception(TimeoutError())
        backlog[:] = [unit for unit in backlog if not unit.job.future.abandoned]
        if not backlog:
            return []
        oldest = backlog[0]
        nearest = sorted(range(1, len(backlog)), key=lambda i: abs(backlog[i].length - oldest.length))
        chosen = {0, *nearest[:self.max_batch_size - 1]}
        batch = [backlog[i] for i in sorted(chosen)]
        backlog[:] = [unit for i, unit in enumerate(backlog) if i not in chosen]
        return [unit for unit in batch if unit.job.take()]  # a time-out since: dropped

    def _answer(self, batch: list[_Input]) -> None:
        started = time.perf_counter()
        try:
            answers = self.run_batch([(unit.job.task, unit.example) for unit in batch])
        except Exception as error:  # noqa: BLE001 - the requests get the error; the worker lives on
            if not isinstance(error, PeltError):
                traceback.print_exc(file=sys.stderr)
            answers = [error] * len(batch)
        if self.on_batch is not None:
            self.on_batch(sum(not isinstance(answer, Exception) for answer in answers), time.perf_counter() - started)
        for unit, answer in zip(batch, answers):
            job = unit.job
            if job.future.done():  # an input of it failed already
                continue
            if job.future.abandoned:  # its client stopped waiting: finished, for no one
                job.future.set_exception(TimeoutError())
                continue
            if isinstance(answer, Exception):
                _fail(job, answer)
                continue
            job.answers[unit.index] = answer
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(job.answers)


def _inputs(job: PredictJob) -> list[_Input]:
    return [_Input(job, i, sum(len(str(v)) for v in example.values())) for i, example in enumerate(job.inputs)]


def _fail(job: PredictJob, error: Exception) -> None:
    if job.take() and not job.future.done():
        job.future.set_exception(error)


def _stopping() -> Exception:
    return PeltError("the server is stopping; send the request again once it is back")


def _settle(future: Future, run: Callable[[], Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(run())
    except Exception as error:  # noqa: BLE001
        if not isinstance(error, PeltError):
            traceback.print_exc(file=sys.stderr)
        future.set_exception(error)
