"""Compute resources: the dask cluster tiles fan out over, and the patch geometry every patch asset shares."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import ConfigurableResource

from xenium_assets.patches.grid import PatchSpec


class DaskResource(ConfigurableResource):
    """A dask.distributed cluster: a local one by default, or an existing scheduler by address.

    Workers of an existing cluster must see the project's data folder at the same path (shared storage),
    and are fastest without dask's default ``MALLOC_TRIM_THRESHOLD_`` (see ``client``).
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
        environ = {
            k: v
            for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()
            if not k.startswith("MALLOC_")
        }
        with (
            dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
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
