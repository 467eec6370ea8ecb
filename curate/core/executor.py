"""Where the per-part work of a stage runs: in this process, a local process pool, or Ray.

A stage that scales out splits its input into parts by a pure function of the input (one
part per input tar, per block of parquet rows, per output shard), hands each part to
``executor.map(fn, parts)`` and assembles the results in input order. Every part writes
its own output to a path that depends only on the part, so the stage's output is the same
bytes whichever executor ran it and however many workers it had.

``fn`` must be a module-level function and each part picklable: the part travels to
another process (spawned, so that no thread pool of the parent is forked) or to a Ray
worker, possibly on another machine that reads and writes the same file system.

    with make_executor("ray", workers=None, ray_address="auto") as executor:
        for result in executor.map(write_one_shard, shard_tasks):
            ...
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from curate.core.errors import UserInputError
from curate.core.malloc import keep_freed_blocks

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("local", "ray")
RAY_INSTALL_HINT = "pip install 'curate[ray]'"


class Executor:
    """Runs ``fn`` over parts, answering in input order; a context manager that frees its
    workers on exit."""

    name: str = ""

    def map(
        self,
        fn: Callable[[T], R],
        parts: Sequence[T],
        *,
        gpus: float = 0,
        threads_ok: bool = False,
    ) -> Iterator[R]:
        """``fn(part)`` for every part, yielded in the order of ``parts``. ``gpus``: what
        one call needs of a GPU (Ray schedules by it; a local pool ignores it).
        ``threads_ok``: ``fn`` spends its time in code that releases the GIL (Arrow,
        polars, numpy over columns), so the local executor runs the parts on threads of
        this process instead of spawning processes (no start-up, nothing pickled); Ray
        runs them as tasks either way."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the workers (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """A pool of ``workers`` processes on this machine (default: one per core); with one
    worker, or one part, the parts run in this process. Each process gets its share of the
    cores for the thread pools of torch, polars and FAISS (as Ray gives each task one CPU),
    so that the workers do not oversubscribe the machine."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise UserInputError(f"--workers must be at least 1 (got {workers})")
        self.workers = workers or machine_cores()
        self._pool: Any = None  # concurrent.futures.ProcessPoolExecutor, made on first use

    def map(
        self,
        fn: Callable[[T], R],
        parts: Sequence[T],
        *,
        gpus: float = 0,
        threads_ok: bool = False,
    ) -> Iterator[R]:
        if self.workers == 1 or len(parts) <= 1:
            return (fn(part) for part in parts)
        if threads_ok:
            return _thread_map(fn, parts, self.workers)
        return self._pool_map(fn, parts)

    def _pool_map(self, fn: Callable[[T], R], parts: Sequence[T]) -> Iterator[R]:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            threads = max(1, machine_cores() // self.workers)
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(threads,),
            )
        futures = [self._pool.submit(fn, part) for part in parts]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()  # the parts not started yet, after an error or an early stop

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor(Executor):
    """Ray tasks (one CPU each): on a local Ray instance started here, or on the cluster at
    ``address`` (``"auto"``: the one ``ray start`` made on this machine). An instance
    started here is shut down on close; one already initialised by the caller is kept.

    At most ``max_in_flight`` parts are submitted ahead of the one being collected
    (default: twice the cluster's CPUs), which bounds the results waiting in Ray's object
    store.
    """

    name = "ray"

    def __init__(self, address: str | None = None, max_in_flight: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UserInputError(
                f"--executor ray needs Ray, which is not installed: {RAY_INSTALL_HINT}"
            ) from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, logging_level="WARNING")
            except (ConnectionError, ValueError) as error:  # no cluster there, a bad address
                raise UserInputError(
                    f"no Ray cluster at --ray-address {address}: {error}. Start one with "
                    "`ray start --head`, or leave out --ray-address for a local instance"
                ) from None
            self._started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.max_in_flight = max_in_flight or max(2, 2 * cpus)

    def map(
        self,
        fn: Callable[[T], R],
        parts: Sequence[T],
        *,
        gpus: float = 0,
        threads_ok: bool = False,
    ) -> Iterator[R]:
        remote = self._ray.remote(fn).options(num_cpus=1, num_gpus=gpus)
        return self._collect(remote, parts)

    def _collect(self, remote: Any, parts: Sequence[T]) -> Iterator[R]:
        from ray.exceptions import RayTaskError

        waiting: deque[Any] = deque()
        upcoming = iter(parts)
        try:
            while True:
                while len(waiting) < self.max_in_flight:
                    part = next(upcoming, _END)
                    if part is _END:
                        break
                    waiting.append(remote.remote(part))
                if not waiting:
                    return
                try:
                    yield self._ray.get(waiting.popleft())
                except RayTaskError as error:  # the worker's own exception, not Ray's wrapper
                    cause = error.cause
                    raise cause if isinstance(cause, Exception) else error from None
        finally:
            for ref in waiting:
                self._ray.cancel(ref)

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


_END = object()


def _thread_map(fn: Callable[[T], R], parts: Sequence[T], workers: int) -> Iterator[R]:
    """``fn`` over ``parts`` on ``workers`` threads, answers in input order; at most
    ``2 * workers`` parts run or wait ahead of the one being collected."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        waiting: deque[Any] = deque()
        upcoming = iter(parts)
        try:
            while True:
                while len(waiting) < 2 * workers:
                    part = next(upcoming, _END)
                    if part is _END:
                        break
                    waiting.append(pool.submit(fn, part))
                if not waiting:
                    return
                yield waiting.popleft().result()
        finally:
            for future in waiting:
                future.cancel()


def machine_cores() -> int:
    """The cores this process may run on (a container's share, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS")


def _start_worker(threads: int) -> None:
    """In a new worker process, before the task's modules are imported (torch and polars
    read these variables when they load)."""
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    keep_freed_blocks()
    if "torch" in sys.modules:  # imported already by the main module
        sys.modules["torch"].set_num_threads(threads)
    # a killed parent leaves its pool's workers waiting forever on their task queue
    watch = threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True)
    watch.start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def make_executor(
    name: str = "local", workers: int | None = None, ray_address: str | None = None
) -> Executor:
    """The executor a command's ``--executor``, ``--workers`` and ``--ray-address`` ask for.

    ``workers``: local processes (default one per core); with Ray, the most parts in flight.
    """
    if name == "local":
        if ray_address is not None:
            raise UserInputError("--ray-address is for --executor ray; add it or drop the address")
        return LocalExecutor(workers)
    if name == "ray":
        if workers is not None and workers < 1:
            raise UserInputError(f"--workers must be at least 1 (got {workers})")
        return RayExecutor(ray_address, max_in_flight=workers)
    raise UserInputError(f"unknown executor {name!r} (--executor): choose {' or '.join(EXECUTORS)}")
