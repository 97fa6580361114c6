"""Where tasks run: a local thread pool, or a dask.distributed cluster.

Library functions that fan out take a ``run(fn, tasks, progress_stage)`` runner: they stay ignorant of
the engine, and the Dagster layer passes a runner bound to its dask resource. Task functions must be
importable module-level functions whose arguments pickle (they may run in another process or host).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any, Protocol

from xenium_assets.progress import Progress, no_progress


class Runner(Protocol):
    def __call__(self, fn: Callable[..., Any], tasks: list[dict], stage: str) -> Iterator[Any]: ...


def thread_runner(workers: int = 2, progress: Progress = no_progress) -> Runner:
    """Run tasks in a local thread pool: for tests and small data. numpy and imagecodecs release the GIL, but
    reads through tifffile's zarr store (``open_plane``) all run on zarr's one event-loop thread, so a DAPI
    transcode gains nothing from a second thread (0.71 s a 2048² block with 2 threads, 0.62 s with 1)."""

    def run(fn: Callable[..., Any], tasks: list[dict], stage: str) -> Iterator[Any]:
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(fn, **t) for t in tasks]
            for done, fut in enumerate(as_completed(futures), 1):
                progress(stage, done, len(tasks))
                yield fut.result()

    return run


def dask_runner(client: Any, progress: Progress = no_progress) -> Runner:
    """Run tasks on a dask.distributed client, yielding results as they complete."""

    def run(fn: Callable[..., Any], tasks: list[dict], stage: str) -> Iterator[Any]:
        from distributed import as_completed as dask_completed

        futures = [client.submit(fn, pure=False, **t) for t in tasks]
        pending = set(futures)
        try:
            for done, fut in enumerate(dask_completed(futures), 1):
                result = fut.result()
                # Released at once: a worker keeps a task's inputs and result while a future holds it, so
                # holding all until the last one ends made worker memory grow with the tasks' size.
                fut.release()
                pending.discard(fut)
                progress(stage, done, len(tasks))
                yield result
        finally:
            if pending:
                client.cancel(list(pending))

    return run


@contextmanager
def dask_client(
    scheduler_address: str | None = None, n_workers: int = 2, threads_per_worker: int = 1, *, lean: bool = False
) -> Iterator:
    """A dask.distributed client: of an existing scheduler by address, or of a local cluster started for the block
    (worker processes tuned as below; ``lean``: for tasks whose large arrays come and go, as prediction's)."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler_address:
        with Client(scheduler_address) as client:
            yield client
        return
    # Workers keep glibc's default allocator settings: dask sets MALLOC_TRIM_THRESHOLD_ for its workers, and
    # any fixed trim or mmap threshold turns off glibc's adaptive one, so every array over 128 KB is mapped
    # and page-faulted afresh. That made a worker cut patches in 0.37-0.43 ms instead of 0.29-0.32 (16 tiles
    # of the 20k² benchmark, 1 worker); peak worker memory is about 35 MB higher without it (docs/benchmarks.md).
    # Arrow's tables (a tile's polygons read, its index written) use the system allocator, not arrow's
    # mimalloc, which keeps what it freed: with mimalloc, 8 tiles of the 20k² benchmark peaked 21 MB higher
    # than 8 of the 10k² one (a quarter of the cells each) in one worker thread; with malloc, 10 MB.
    environ = {
        k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items() if not k.startswith("MALLOC_")
    } | {"ARROW_DEFAULT_MEMORY_POOL": "system"}
    # Prediction's tiles allocate and free arrays of tens to hundreds of MB (the U-Net's activations, the class
    # probabilities, the watershed's, the patches): with glibc's adaptive thresholds they are later served from a
    # heap that is not given back, so a worker's resident memory keeps the stages' high-water marks. Fixed
    # thresholds map each large array and return it when freed, at the cost of faulting its pages in afresh: bench
    # predict's worker peak went from 1,970 to 1,504 MiB (20k²) and 1,867 to 1,477 (10k²), its time from 336 to
    # 421 s (worker CPU 621 to 786 s). Trimming the heap after each tile instead kept 1,780 MiB for +13 % time.
    if lean:
        environ |= {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    # A local cluster has no dashboard, so its workers need not sample profiles or poll the system every
    # few milliseconds: with these four settings, 2 workers transcoded the 20k² benchmark slide in
    # 37.8-39.2 s against 40.2-41.7 s (two interleaved runs each; a process pool took 37.1-38.8 s).
    quiet = {
        "distributed.worker.profile.enabled": False,
        "distributed.admin.tick.interval": "1s",
        "distributed.worker.memory.monitor-interval": "1s",
        "distributed.admin.system-monitor.interval": "5s",
    }
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": environ, **quiet}),
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=None,
            # Teardown races (a heartbeat to a closing worker) log tracebacks that mean nothing;
            # task errors still reach us through their futures.
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
