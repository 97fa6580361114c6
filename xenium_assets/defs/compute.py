"""Compute resources: the dask cluster tiles fan out over, and the patch geometry every patch asset shares."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import ConfigurableResource

from xenium_assets.patches.grid import PatchSpec


class DaskResource(ConfigurableResource):
    """A dask.distributed cluster: a local one by default, or an existing scheduler by address.

    Workers of an existing cluster must see the project's data folder at the same path (shared storage);
    start them with ``MALLOC_MMAP_THRESHOLD_=1048576`` in their environment for the local cluster's flat memory.
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
        with (
            # Blocks and crops are large short-lived arrays. With glibc's default (a threshold that rises to
            # the largest block freed) they come from the heap, which fragments: one process cutting 32 tiles
            # peaked 20 MB higher on a 20k² slide than on a 10k² one. Served by mmap above 1 MB, they go back
            # to the system when freed (3 MB higher). Set before the workers start: glibc reads it once.
            dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 1 << 20}),
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
