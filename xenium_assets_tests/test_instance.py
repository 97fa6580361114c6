"""A running Dagster instance (`dagster dev`: webserver and daemon on loopback), driven over GraphQL.

The instance runs as a user runs it, from workspace.yaml with the project's dagster.yaml, in a temporary
data folder; it is always torn down (its whole process group), and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenium_assets.landing import COMPLETE_MARKER
from xenium_assets_tests.conftest import REPO

ASSETS = {
    "raw_bundle",
    "qc_adata",
    "label_reference",
    "cell_labels",
    "dapi_zarr",
    "tile_geometry",
    "patch_shards",
    "trained_model",
    "evaluation_report",
    "nucleus_segmenter",
    "cell_predictions",
}
CHECKS = {"qc_pass_fraction", "label_classes_above_minimum", "shards_match_index", "beats_chance"}
SENSOR_TAG = "dagster/sensor_name"


class Instance:
    """`dagster dev` in its own process group, and a small GraphQL client for it."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.home = data / "dagster_home"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 180) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "XENIUM_ASSETS_DATA": str(self.data),
            "XENIUM_ASSETS_SENSOR_INTERVAL": "5",
        }
        log = open(self.data / "dagster_dev.log", "ab")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dagster"),
                "dev",
                "-w",
                "workspace.yaml",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{port}/graphql"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.query("{ version }")["version"]:
                    return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"dagster dev did not answer in {timeout}s: see {self.data / 'dagster_dev.log'}")

    def stop(self) -> None:
        """Stop the webserver, daemon, code servers and any run they launched (some start their own process
        groups, so every descendant is collected first)."""
        import psutil

        if self.proc is None:
            return
        family = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(family, timeout=10)
        self.proc = None

    def query(self, text: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": text, "variables": variables or {}}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.load(response)
        if payload.get("errors"):
            raise AssertionError(payload["errors"])
        return payload["data"]

    def runs(self, tags: dict[str, str] | None = None, statuses: list[str] | None = None) -> list[dict]:
        run_filter: dict = {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}
        if statuses:
            run_filter["statuses"] = statuses
        data = self.query(
            """query ($filter: RunsFilter) { runsOrError(filter: $filter) { ... on Runs {
                results { runId status tags { key value } } } } }""",
            {"filter": run_filter},
        )
        return data["runsOrError"]["results"]

    def busy(self) -> bool:
        """A run queued or in flight, or a backfill (automation makes one when a tick requests assets of
        different partitionings together) with runs still to launch."""
        if self.runs(statuses=["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"]):
            return True
        backfills = self.query("""{ partitionBackfillsOrError { ... on PartitionBackfills {
            results { id status } } } }""")["partitionBackfillsOrError"]["results"]
        return any(b["status"] in ("REQUESTED", "CANCELING", "FAILING") for b in backfills)

    def settle(self, timeout: float, quiet: float = 15) -> None:
        """Wait until nothing is in flight, twice ``quiet`` seconds apart (more than a sensor interval, so
        automation has nothing left to request): stopping the instance under a run kills its worker before
        it can record the end, and Dagster then shows that run as started for ever."""

        def idle() -> bool:
            if self.busy():
                return False
            time.sleep(quiet)
            return not self.busy()

        self.wait_for(idle, timeout, "no run in flight")

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = predicate()
            if found:
                return found
            time.sleep(2)
        raise TimeoutError(f"{what} did not happen within {timeout}s (log: {self.data / 'dagster_dev.log'})")

    def wait_success(self, run_id: str, timeout: float = 300) -> None:
        def status():
            s = self.query("query ($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})
            st = s["runOrError"]["status"]
            if st in ("FAILURE", "CANCELED"):
                raise AssertionError(f"run {run_id} ended {st} (log: {self.data / 'dagster_dev.log'})")
            return st == "SUCCESS"

        self.wait_for(status, timeout, f"success of run {run_id}")


@pytest.fixture(scope="module")
def instance(tmp_path_factory) -> Iterator[Instance]:
    data = tmp_path_factory.mktemp("instance") / "data"
    (data / "dagster_home").mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", data / "dagster_home" / "dagster.yaml")
    inst = Instance(data)
    inst.start()
    try:
        yield inst
    finally:
        inst.stop()


def _small(folder: Path, version: str, seed: int) -> Path:
    from xenium_assets.synth import SynthParams, generate_bundle

    params = SynthParams(n_cells=300, width=1024, height=1024, version=version, seed=seed, expression_shift=1.0)
    return generate_bundle(folder, params).bundle


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory) -> Path:
    return _small(tmp_path_factory.mktemp("drop") / "run_a", "3", 3)


@pytest.fixture(scope="module")
def dropped(tmp_path_factory) -> dict[str, Path]:
    """Three runs to drop in the landing folder, of three XOA releases, each with its own expression shift (other
    runs than small_bundle, which another test registers: a copy of it would be skipped as a copy)."""
    root = tmp_path_factory.mktemp("more")
    return {
        "run_a": _small(root / "run_a", "3", 6),
        "run_b": _small(root / "run_b", "4", 4),
        "run_c": _small(root / "run_c", "2", 5),
    }


def test_the_whole_graph_is_served(instance):
    data = instance.query("""{
        assetNodes { assetKey { path } partitionDefinition { description }
                     assetChecksOrError { ... on AssetChecks { checks { name } } } }
        repositoriesOrError { ... on RepositoryConnection { nodes {
            location { name } sensors { name sensorState { status } } schedules { name cronSchedule } } } } }""")
    nodes = {n["assetKey"]["path"][0]: n for n in data["assetNodes"]}
    assert set(nodes) == ASSETS
    assert "samples" in nodes["raw_bundle"]["partitionDefinition"]["description"]
    assert "Tile: 'r0c0'" in nodes["patch_shards"]["partitionDefinition"]["description"]
    checks = {c["name"] for n in nodes.values() for c in (n["assetChecksOrError"].get("checks") or [])}
    assert checks == CHECKS
    (repo,) = data["repositoriesOrError"]["nodes"]
    assert repo["location"]["name"] == "xenium_assets"
    assert {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]} == {
        "landing_sensor": "RUNNING",
        "image_landing_sensor": "RUNNING",
        "automation": "RUNNING",
    }
    assert [(s["name"], s["cronSchedule"]) for s in repo["schedules"]] == [("retrain_schedule", "0 3 * * 1")]


def test_materialization_launched_over_graphql(instance, small_bundle):
    env = {**os.environ, "DAGSTER_HOME": str(instance.home), "XENIUM_ASSETS_DATA": str(instance.data)}
    subprocess.run(
        [str(Path(sys.executable).parent / "xenium-assets"), "add", str(small_bundle), "--sample", "api"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    launched = instance.query(
        """mutation ($params: ExecutionParams!) { launchRun(executionParams: $params) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
        {
            "params": {
                "selector": {
                    "repositoryLocationName": "xenium_assets",
                    "repositoryName": "__repository__",
                    "jobName": "__ASSET_JOB",
                    "assetSelection": [{"path": ["raw_bundle"]}],
                },
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "api"}]},
            }
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    instance.wait_success(launched["run"]["runId"], timeout=300)
    assert (instance.data / "samples" / "api" / "raw_bundle" / "manifest.json").exists()


def _landing_runs(instance) -> list[dict]:
    return instance.runs({SENSOR_TAG: "landing_sensor"})


def _made(instance, asset: str) -> list[str]:
    """The partition of each materialization of ``asset`` so far ('' for an unpartitioned asset)."""
    data = instance.query(
        """query ($key: AssetKeyInput!) { assetNodes(assetKeys: [$key]) {
            assetMaterializations(limit: 10000) { partition } } }""",
        {"key": {"path": [asset]}},
    )
    return [m["partition"] or "" for m in data["assetNodes"][0]["assetMaterializations"]]


def _sensor_skips(instance) -> list[str]:
    data = instance.query(
        """{ sensorOrError(sensorSelector: {repositoryLocationName: "xenium_assets", repositoryName: "__repository__",
            sensorName: "landing_sensor"}) { ... on Sensor { sensorState { ticks(limit: 50) { skipReason } } } } }"""
    )
    return [t["skipReason"] or "" for t in data["sensorOrError"]["sensorState"]["ticks"]]


def _files(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``folder`` with its modification time, size and content hash."""
    import hashlib

    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size, hashlib.sha1(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _wait_for_sample(instance, sample: str, timeout: float) -> None:
    """Until the sample has its labels and all 64 tiles' shards, then until nothing is in flight."""
    folder = instance.data / "samples" / sample

    def done() -> bool:
        return (
            any((folder / "cell_labels").glob("*.parquet"))
            and len(list(folder.glob("patch_shards/*/index.parquet"))) == 64
        )

    instance.wait_for(done, timeout, f"labels and shards of {sample} made by automation")
    instance.settle(600)


@pytest.mark.timeout(1800)  # a whole chain of real runs for three samples, started by sensors, on 2 cores
def test_dropped_bundles_run_once_and_a_new_sample_touches_no_other(instance, dropped):
    landing = instance.data / "landing"
    landing.mkdir(exist_ok=True)
    # 1. A folder still being copied starts nothing.
    copying = landing / "run_a"
    copying.mkdir()
    shutil.copy(dropped["run_a"] / "experiment.xenium", copying)
    stop = threading.Event()

    def keep_copying():
        growing = copying / "transcripts.parquet"
        while not stop.is_set():
            with growing.open("ab") as f:
                f.write(b"\0" * 1024)
            stop.wait(1.0)

    writer = threading.Thread(target=keep_copying, daemon=True)
    writer.start()
    time.sleep(20)  # about four sensor ticks
    stop.set()
    writer.join()
    assert _landing_runs(instance) == []
    # 2. Once complete, it runs with a second run dropped beside it (and a corrupt bundle reported, not blocking).
    (copying / "transcripts.parquet").unlink()
    for item in dropped["run_a"].iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, copying / item.name)
    shutil.copytree(dropped["run_b"], landing / "run_b")
    corrupt = landing / "run_corrupt"
    corrupt.mkdir()
    shutil.copy(dropped["run_a"] / "experiment.xenium", corrupt)
    (corrupt / "cells.parquet").write_bytes(b"not parquet")
    runs = instance.wait_for(lambda: len(_landing_runs(instance)) == 2 and _landing_runs(instance), 180, "two runs")
    assert {{t["key"]: t["value"] for t in r["tags"]}["dagster/partition"] for r in runs} == {"run_a", "run_b"}
    for run in runs:
        instance.wait_success(run["runId"], timeout=420)
    for asset in ("raw_bundle", "qc_adata", "dapi_zarr", "tile_geometry"):  # the per-sample assets, all of them
        assert (instance.data / "samples" / "run_a" / asset).is_dir(), asset
    # 3. Automation builds the label reference once (the first samples' it saw: here also the sample another test
    # registered over GraphQL, which automation followed), then each sample's labels and shards.
    for sample in ("run_a", "run_b"):
        _wait_for_sample(instance, sample, 900)
    assert _made(instance, "label_reference") == [""]
    data = instance.query("""{ assetNodes(assetKeys: [{path: ["label_reference"]}]) {
        assetMaterializations(limit: 1) { runId } } }""")
    run_id = data["assetNodes"][0]["assetMaterializations"][0]["runId"]
    tags = {t["key"]: t["value"] for r in instance.runs() if r["runId"] == run_id for t in r["tags"]}
    assert tags.get(SENSOR_TAG) == "automation", tags  # launched by the automation sensor, not by hand
    made = Counter(_made(instance, "qc_adata"))
    assert made["run_a"] == made["run_b"] == 1  # the landing runs made them; automation did not make them again

    # 4. A third sample: only its own partitions are made, and the first two samples' shards are untouched.
    made_before = {a: _made(instance, a) for a in ASSETS - {"trained_model", "evaluation_report"}}
    shards_before = {s: _files(instance.data / "samples" / s / "patch_shards") for s in ("run_a", "run_b")}
    labels_before = {s: _files(instance.data / "samples" / s / "cell_labels") for s in ("run_a", "run_b")}
    shutil.copytree(dropped["run_c"], landing / "run_c")
    (landing / "run_c" / COMPLETE_MARKER).touch()
    _wait_for_sample(instance, "run_c", 900)
    new = {a: sorted((Counter(_made(instance, a)) - Counter(made_before[a])).elements()) for a in made_before}
    for asset in ("raw_bundle", "qc_adata", "dapi_zarr", "tile_geometry", "cell_labels"):
        assert new[asset] == ["run_c"], (asset, new[asset])
    assert new["label_reference"] == []
    assert len(new["patch_shards"]) == 64 and {p.split("|")[0] for p in new["patch_shards"]} == {"run_c"}
    for sample in ("run_a", "run_b"):
        assert _files(instance.data / "samples" / sample / "patch_shards") == shards_before[sample]  # bytes, times
        assert _files(instance.data / "samples" / sample / "cell_labels") == labels_before[sample]

    # 5. The same run copied in again under another name is recognised and skipped with the reason; the same
    # folder dropped again, and a restarted daemon, start nothing new.
    before = len(instance.runs())
    shutil.copytree(landing / "run_b", landing / "run_b_again")
    (landing / "run_b_again" / COMPLETE_MARKER).touch()
    instance.wait_for(
        lambda: any("run_b_again is already registered as run_b" in r for r in _sensor_skips(instance)),
        120,
        "the copy skipped with its reason",
    )
    assert not (instance.data / "samples" / "run_b_again").exists()
    shutil.rmtree(copying)
    shutil.copytree(dropped["run_a"], copying)
    instance.stop()
    instance.start()
    time.sleep(25)  # five sensor intervals
    assert len(_landing_runs(instance)) == 3
    assert len(instance.runs()) == before
