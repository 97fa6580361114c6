"""Compute resources: the dask cluster tiles fan out over, and the patch geometry every patch asset shares."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import ConfigurableResource

from xenium_assets.patches.grid import PatchSpec


class DaskResource(ConfigurableResource):
    """A dask.distributed cluster: a local one by default, or an existing scheduler by address.

    Workers of an existing cluster must see the project's data folder at the same path (shared storage),
    and are fastest and leanest without dask's default ``MALLOC_TRIM_THRESHOLD_`` and with
    ``ARROW_DEFAULT_MEMORY_POOL=system`` in their environment (see ``client``).
    """

    scheduler_address: str | None = None
    """e.g. tcp://10.0.0.5:8786; empty: start a local cluster for the run."""
    n_workers: int = 2
    threads_per_worker: int = 1

    @contextmanager
    def client(self) -> Iterator:
        import dask
        from distributed import Client, LocalCluster

        if self.scheduler_address:
            with Client(self.scheduler_address) as client:
                yield client
            return
        # Workers keep glibc's default allocator settings: dask sets MALLOC_TRIM_THRESHOLD_ for its workers, and
        # any fixed trim or mmap threshold turns off glibc's adaptive one, so every array over 128 KB is mapped
        # and page-faulted afresh. That made a worker cut patches in 0.37-0.43 ms instead of 0.29-0.32 (16 tiles
        # of the 20k² benchmark, 1 worker); peak worker memory is about 35 MB higher without it (README).
        # Arrow's tables (a tile's polygons read, its index written) use the system allocator, not arrow's
        # mimalloc, which keeps what it freed: with mimalloc, 8 tiles of the 20k² benchmark peaked 21 MB higher
        # than 8 of the 10k² one (a quarter of the cells each) in one worker thread; with malloc, 10 MB.
        environ = {
            k: v
            for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()
            if not k.startswith("MALLOC_")
        } | {"ARROW_DEFAULT_MEMORY_POOL": "system"}
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
                n_workers=self.n_workers,
                threads_per_worker=self.threads_per_worker,
                processes=True,
                dashboard_address=None,
                # Teardown races (a heartbeat to a closing worker) log tracebacks that mean nothing;
                # task errors still reach us through their futures.
                silence_logs=logging.CRITICAL,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client


class PatchGeometry(ConfigurableResource):
    """Patch size and pixel size in physical units, shared by dapi_zarr, tile_geometry and patch_shards."""

    size_um: float = 20.0
    pixel_size_um: float = 0.2125
    """Target µm per pixel: bundles with another pixel size are resampled to it."""

    @property
    def spec(self) -> PatchSpec:
        return PatchSpec(size_um=self.size_um, pixel_size_um=self.pixel_size_um)
