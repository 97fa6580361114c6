"""Landing sensor, retrain schedule and the dask resource, tested with Dagster's own test contexts."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime

import pytest
from dagster import DagsterInstance, RunRequest, SkipReason, build_schedule_context, build_sensor_context

from xenium_assets.defs.compute import DaskResource
from xenium_assets.defs.partitions import SAMPLES
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.defs.schedules import DEFAULT_CRON, retrain_schedule
from xenium_assets.defs.sensors import landing_sensor
from xenium_assets.landing import COMPLETE_MARKER, LandingState, look
from xenium_assets.training.inputs import training_inputs


def _evaluate(instance, project: ProjectResource, cursor: str | None):
    context = build_sensor_context(instance=instance, cursor=cursor, resources={"project": project})
    return landing_sensor(context)


def _requests(result) -> list[RunRequest]:
    return list(result.run_requests or []) if not isinstance(result, SkipReason) else []


def test_a_folder_is_ready_once_its_files_stop_changing(tmp_path):
    landing = tmp_path / "landing"
    run = landing / "run1"
    run.mkdir(parents=True)
    (run / "experiment.xenium").write_text("{}")
    ready, state = look(landing, LandingState())
    assert ready == [] and len(state.waiting) == 1  # first sight: maybe still copying
    (run / "cells.parquet").write_bytes(b"x" * 10)
    ready, state = look(landing, state)
    assert ready == []  # it changed since: still copying
    ready, state = look(landing, state)
    assert ready == [run]  # unchanged between two looks: complete
    ready, state = look(landing, LandingState.from_json(json.loads(json.dumps(state.to_json()))))
    assert ready == []  # handed out once, also after a restart (state through JSON)
    (run / "cells.parquet").write_bytes(b"y" * 20)
    ready, state = look(landing, state)
    ready, state = look(landing, state)
    assert ready == [run]  # new content is new work
    marked = landing / "run2"
    marked.mkdir()
    (marked / "experiment.xenium").write_text("{}")
    (marked / COMPLETE_MARKER).touch()
    assert look(landing, state)[0] == [marked]  # a completion marker needs no second look


def test_landing_sensor_registers_and_requests_each_bundle_once(project, bundles):
    instance = DagsterInstance.get()
    resource = ProjectResource(data_dir=str(project))
    landing = project / "landing"
    landing.mkdir()
    shutil.copytree(bundles("3"), landing / "output-XETG0001__slide 7__Region_1")
    broken = landing / "broken_run"
    broken.mkdir()
    (broken / "experiment.xenium").write_text("{}")
    first = _evaluate(instance, resource, None)
    assert isinstance(first.skip_reason, SkipReason) and "still being copied" in first.skip_reason.skip_message
    second = _evaluate(instance, resource, first.cursor)
    (request,) = _requests(second)
    assert request.partition_key == "output-XETG0001__slide_7__Region_1"  # sanitised folder name
    assert second.dynamic_partitions_requests[0].partition_keys == [request.partition_key]
    assert resource.registry.get(request.partition_key).bundle_dir == str(
        (landing / request.partition_key.replace("slide_7", "slide 7")).resolve()
    )
    # The broken folder is reported, not retried, and did not stop the good one.
    instance.add_dynamic_partitions(SAMPLES, [request.partition_key])
    third = _evaluate(instance, resource, second.cursor)
    assert _requests(third) == [] and "no new bundle" in third.skip_reason.skip_message
    assert str(broken.resolve()) in json.loads(second.cursor)["done"]


def test_a_broken_bundle_alone_is_a_skip_with_its_reason(project, tmp_path):
    resource = ProjectResource(data_dir=str(project))
    folder = project / "landing" / "bad"
    folder.mkdir(parents=True)
    (folder / "experiment.xenium").write_text("{}")
    (folder / COMPLETE_MARKER).touch()
    result = _evaluate(DagsterInstance.get(), resource, None)
    assert _requests(result) == []
    assert "broken bundle: " in result.skip_reason.skip_message and "cells.parquet: missing" in (
        result.skip_reason.skip_message
    )


def test_a_copy_of_a_registered_run_is_skipped_with_the_reason(project, bundles):
    """The same run copied in again under another folder name (same experiment, region and files) is recognised
    and skipped, by the sensor and by the registry; another run in the same landing folder is not held up."""
    from xenium_assets.registry import AlreadyRegistered

    resource = ProjectResource(data_dir=str(project))
    landing = project / "landing"
    landing.mkdir()
    shutil.copytree(bundles("3"), landing / "run_b")
    (landing / "run_b" / COMPLETE_MARKER).touch()
    first = _evaluate(DagsterInstance.get(), resource, None)
    assert [r.partition_key for r in _requests(first)] == ["run_b"]
    shutil.copytree(landing / "run_b", landing / "run_b_again")
    second = _evaluate(DagsterInstance.get(), resource, first.cursor)
    assert _requests(second) == []
    assert f"{landing / 'run_b_again'} is already registered as run_b" in second.skip_reason.skip_message
    assert [e.key for e in resource.registry.entries()] == ["run_b"]
    shutil.copytree(bundles("4", seed=8), landing / "run_c")  # a different run beside another copy
    shutil.copytree(landing / "run_b", landing / "run_b_third")
    for name in ("run_c", "run_b_third"):
        (landing / name / COMPLETE_MARKER).touch()
    third = _evaluate(DagsterInstance.get(), resource, second.cursor)
    assert [r.partition_key for r in _requests(third)] == ["run_c"]
    with pytest.raises(AlreadyRegistered, match="already registered as run_b") as caught:
        resource.registry.register(landing / "run_b_again")
    assert caught.value.key == "run_b"


def _schedule(instance, resource):
    context = build_schedule_context(
        instance=instance,
        resources={"project": resource},
        scheduled_execution_time=datetime(2026, 11, 30, 3, 0, tzinfo=UTC),
    )
    return retrain_schedule(context)


def test_retraining_when_labels_shards_or_the_reference_changed(project):
    from xenium_assets.labels.store import mark_latest

    instance = DagsterInstance.get()
    resource = ProjectResource(data_dir=str(project))
    paths = resource.paths
    assert retrain_schedule.cron_schedule == DEFAULT_CRON == "0 3 * * 1"  # weekly by default
    result = _schedule(instance, resource)
    assert isinstance(result, SkipReason) and "no patch shards" in result.skip_message
    index = project / "samples" / "s1" / "patch_shards" / "r0c0" / "index.parquet"
    index.parent.mkdir(parents=True)
    index.write_bytes(b"1")
    mark_latest(paths, "leiden-1")
    paths.sample_labels("s1", "leiden-1").parent.mkdir(parents=True)
    paths.sample_labels("s1", "leiden-1").write_bytes(b"1")
    assert isinstance(_schedule(instance, resource), RunRequest)  # never trained

    def trained_now() -> SkipReason:
        (project / "models").mkdir(exist_ok=True)
        (project / "models" / "latest.json").write_text(json.dumps({"inputs": training_inputs(resource.paths)}))
        result = _schedule(instance, resource)
        assert isinstance(result, SkipReason) and "unchanged since the last model" in result.skip_message
        return result

    trained_now()
    paths.sample_labels("s2", "leiden-1").parent.mkdir(parents=True)
    paths.sample_labels("s2", "leiden-1").write_bytes(b"2")  # a sample's labels added
    assert isinstance(_schedule(instance, resource), RunRequest)
    trained_now()
    paths.sample_labels("s1", "leiden-0").write_bytes(b"0")  # labels of another (not the latest) reference
    trained_now()
    mark_latest(paths, "leiden-2")  # a new reference
    request = _schedule(instance, resource)
    assert isinstance(request, RunRequest) and request.run_key.startswith("retrain-")
    trained_now()
    shard = project / "samples" / "s2" / "patch_shards" / "r0c0" / "index.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"2")  # a sample's shards added
    assert isinstance(_schedule(instance, resource), RunRequest)


def _worker_settings() -> tuple[dict, str, bool]:
    import dask
    import pyarrow as pa

    profiling = dask.config.get("distributed.worker.profile.enabled")
    return dict(os.environ), pa.default_memory_pool().backend_name, profiling


def test_dask_resource_local_and_attached():
    from distributed import LocalCluster

    with DaskResource(n_workers=2).client() as client:
        pids = set(client.gather(client.map(lambda i: os.getpid(), range(8), pure=False)))
        assert len(client.scheduler_info()["workers"]) == 2 and os.getpid() not in pids
        # The local workers' allocators and background work, set for speed and flat memory (DaskResource.client).
        for env, pool, profiling in client.run(_worker_settings).values():
            assert not [k for k in env if k.startswith("MALLOC_")], env
            assert env["ARROW_DEFAULT_MEMORY_POOL"] == "system" and pool == "system"
            assert profiling is False
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    try:  # an existing scheduler, attached to by address
        with DaskResource(scheduler_address=cluster.scheduler_address).client() as client:
            assert len(client.scheduler_info()["workers"]) == 2
            assert client.submit(sum, [1, 2, 3]).result() == 6
    finally:
        cluster.close()


@pytest.mark.parametrize("name", ["landing_sensor", "image_landing_sensor", "automation"])
def test_sensors_run_by_default(name):
    from dagster import DefaultSensorStatus

    from xenium_assets.definitions import defs

    assert defs.resolve_sensor_def(name).default_status == DefaultSensorStatus.RUNNING


def _ticks(defs, instance, keys):
    """A function that evaluates the automation conditions of ``keys`` from a cursor, as one automation-sensor
    tick."""
    from dagster import AssetSelection, evaluate_automation_conditions

    keys = keys if isinstance(keys, list) else [keys]

    def tick(cursor):
        return evaluate_automation_conditions(
            defs, instance, asset_selection=AssetSelection.assets(*keys), cursor=cursor
        )

    return tick


def test_a_new_sample_brings_its_own_labels_and_shards_and_not_a_new_reference(tmp_path):
    """The reference is built when first missing, once its inputs exist and none is in flight; later, a sample's
    qc_adata brings that sample's labels only, its image assets that sample's shards only, and the reference is
    never rebuilt for it. A new reference (a user's run) relabels every sample, and re-cuts no shard."""
    from dagster import AssetKey, AssetMaterialization, instance_for_test

    from xenium_assets.definitions import build_definitions

    defs = build_definitions(tmp_path)
    reference, labels, shards = AssetKey("label_reference"), AssetKey("cell_labels"), AssetKey("patch_shards")
    with instance_for_test() as instance:
        tick = _ticks(defs, instance, [reference, labels, shards])

        def landed(sample: str) -> None:
            instance.add_dynamic_partitions(SAMPLES, [sample])
            for asset in ("raw_bundle", "qc_adata", "dapi_zarr", "tile_geometry"):
                instance.report_runless_asset_event(AssetMaterialization(asset, partition=sample))

        result = tick(None)
        landed("a")
        landed("b")
        result = tick(result.cursor)
        assert result.get_num_requested(reference) == 1  # built, with both samples
        result = tick(result.cursor)  # new partitions read missing wait one tick (settled_eager)
        assert {k.split("|")[0] for k in result.get_requested_partitions(shards)} == {"a", "b"}
        assert result.get_num_requested(reference) == 0 and result.get_num_requested(labels) == 0  # no reference yet
        instance.report_runless_asset_event(AssetMaterialization(reference))
        result = tick(result.cursor)
        assert result.get_requested_partitions(labels) == {"a", "b"}
        for sample in ("a", "b"):
            instance.report_runless_asset_event(AssetMaterialization(labels, partition=sample))
        result = tick(result.cursor)
        assert result.get_num_requested(reference) == result.get_num_requested(labels) == 0

        landed("c")
        result = tick(result.cursor)
        result = tick(result.cursor)
        assert result.get_num_requested(reference) == 0  # a landed sample never rebuilds the reference
        assert result.get_requested_partitions(labels) == {"c"}
        assert {k.split("|")[0] for k in result.get_requested_partitions(shards)} == {"c"}

        instance.report_runless_asset_event(AssetMaterialization(labels, partition="c"))
        result = tick(result.cursor)
        instance.report_runless_asset_event(AssetMaterialization(reference))  # later, a user rebuilt it
        result = tick(result.cursor)
        assert result.get_requested_partitions(labels) == {"a", "b", "c"}
        assert result.get_num_requested(shards) == 0  # and no shard is re-cut


def test_a_partition_is_requested_as_missing_only_once_it_stays_missing(tmp_path):
    """settled_eager: a sample partition that reads missing and idle for the first time is not requested on that
    tick, the state Dagster's status cache can show for one tick right after a run made the partition. If a run
    made it meanwhile, nothing is requested; if it is still missing on the next tick, it is."""
    from dagster import (
        AssetKey,
        AssetMaterialization,
        instance_for_test,
    )

    from xenium_assets.definitions import build_definitions

    defs = build_definitions(tmp_path)
    qc = AssetKey("qc_adata")
    with instance_for_test() as instance:
        tick = _ticks(defs, instance, qc)

        result = tick(None)
        instance.add_dynamic_partitions(SAMPLES, ["made", "left"])
        for sample in ("made", "left"):
            instance.report_runless_asset_event(AssetMaterialization("raw_bundle", partition=sample))
        result = tick(result.cursor)
        assert result.get_num_requested(qc) == 0  # both read missing and idle for the first time
        instance.report_runless_asset_event(AssetMaterialization(qc, partition="made"))  # a run made this one
        result = tick(result.cursor)
        assert result.get_requested_partitions(qc) == {"left"}
        assert tick(result.cursor).get_num_requested(qc) == 0


def test_a_wiped_reference_is_rebuilt_one_tick_later(tmp_path):
    """label_reference read missing and idle for the first time (here: wiped, as the status cache can show it for
    one tick after a run by hand made it) is not requested on that tick, and is on the next if still missing."""
    from dagster import AssetKey, AssetMaterialization, instance_for_test

    from xenium_assets.definitions import build_definitions

    defs = build_definitions(tmp_path)
    reference = AssetKey("label_reference")
    with instance_for_test() as instance:
        tick = _ticks(defs, instance, [reference])
        instance.add_dynamic_partitions(SAMPLES, ["a"])
        instance.report_runless_asset_event(AssetMaterialization("qc_adata", partition="a"))
        instance.report_runless_asset_event(AssetMaterialization(reference))
        result = tick(None)
        assert result.get_num_requested(reference) == 0  # made and up to date
        instance.report_runless_asset_event(AssetMaterialization("qc_adata", partition="a"))
        result = tick(result.cursor)
        assert result.get_num_requested(reference) == 0  # an input's update does not rebuild it
        instance.wipe_assets([reference])
        result = tick(result.cursor)
        assert result.get_num_requested(reference) == 0  # reads missing and idle for the first time
        result = tick(result.cursor)
        assert result.get_num_requested(reference) == 1  # still missing: requested
