"""Compute resources: the dask cluster tiles fan out over, and the patch geometry every patch asset shares."""

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import ConfigurableResource

from xenium_assets.parallel import dask_client
from xenium_assets.patches.grid import PatchSpec


class DaskResource(ConfigurableResource):
    """A dask.distributed cluster: a local one by default, or an existing scheduler by address.

    Workers of an existing cluster must see the project's data folder at the same path (shared storage),
    and are fastest and leanest without dask's default ``MALLOC_TRIM_THRESHOLD_`` and with
    ``ARROW_DEFAULT_MEMORY_POOL=system`` in their environment; prediction's are leanest with
    ``MALLOC_MMAP_THRESHOLD_=65536`` and ``MALLOC_TRIM_THRESHOLD_=65536`` (see ``parallel.dask_client``).
    """

    scheduler_address: str | None = None
    """e.g. tcp://10.0.0.5:8786; empty: start a local cluster for the run."""
    n_workers: int = 2
    threads_per_worker: int = 1

    @contextmanager
    def client(self, lean: bool = False) -> Iterator:
        """``lean``: a local cluster's workers give freed memory back at once (see ``parallel.dask_client``)."""
        with dask_client(self.scheduler_address, self.n_workers, self.threads_per_worker, lean=lean) as client:
            yield client


class PatchGeometry(ConfigurableResource):
    """Patch size and pixel size in physical units, shared by dapi_zarr, tile_geometry and patch_shards."""

    size_um: float = PatchSpec.size_um
    pixel_size_um: float = PatchSpec.pixel_size_um
    """Target µm per pixel: bundles with another pixel size are resampled to it."""
    ring_um: float = PatchSpec.ring_um
    """How far the perinuclear ring grows from each nucleus (stopped halfway to its neighbours)."""

    @property
    def spec(self) -> PatchSpec:
        return PatchSpec(size_um=self.size_um, pixel_size_um=self.pixel_size_um, ring_um=self.ring_um)
