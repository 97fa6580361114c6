"""The ``xenium-assets`` command: make synthetic bundles, register samples, run the demo, benchmark.

Commands that touch Dagster use the project's instance: $DAGSTER_HOME if set, else
data/dagster_home with the repository's dagster.yaml, so runs started here show in `dagster dev`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from xenium_assets.layout import DAGSTER_CONFIG, ProjectPaths
from xenium_assets.prediction.options import PredictOptions


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def project_instance(paths: ProjectPaths):  # -> DagsterInstance (imported lazily: Dagster is slow to import)
    """The project's Dagster instance, creating data/dagster_home with the project's dagster.yaml."""
    from dagster import DagsterInstance

    if "DAGSTER_HOME" not in os.environ:
        home = paths.dagster_home
        home.mkdir(parents=True, exist_ok=True)
        config = home / DAGSTER_CONFIG
        project_config = Path.cwd() / DAGSTER_CONFIG
        if not config.exists() and project_config.exists():
            config.symlink_to(project_config.resolve())
        os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.get()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Xenium bundles to expression-labelled DAPI training data, as Dagster assets."""


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--cells", "n_cells", default=1500, show_default=True, help="Number of cells.")
@click.option("--width", default=2048, show_default=True, help="Image width in pixels (0.2125 µm each).")
@click.option("--height", default=2048, show_default=True, help="Image height in pixels.")
@click.option(
    "--version",
    "version",
    type=click.Choice(["1", "1.7", "2", "3", "4"]),
    default="3",
    show_default=True,
    help="XOA release to imitate: 1 (integer ids), 1.7 (binary ids), 2/3 (morphology_focus_000N), 4 (chNNNN_<name>).",
)
@click.option("--seed", default=0, show_default=True, help="Random seed; the same seed gives the same bundle.")
@click.option("--null", is_flag=True, help="Draw nuclear morphology independently of the class (negative control).")
@click.option(
    "--null-regions",
    is_flag=True,
    help="Morphology follows its own random region map, independent of the class (a spatially clumped negative "
    "control). Not with --null.",
)
@click.option("--classes", "n_classes", default=4, show_default=True, help="Number of cell classes (2-5).")
@click.option(
    "--codec",
    type=click.Choice(["jpeg2000", "zlib", "zstd", "lzw", "none"]),
    default="jpeg2000",
    show_default=True,
    help="TIFF tile compression (the instrument writes JPEG-2000).",
)
@click.option("--csv", is_flag=True, help="Also write the .csv.gz variants of the tables.")
@click.option("--region", default=None, help="region_name in experiment.xenium (default: the folder name).")
@click.option("--workers", default=0, help="Threads for rendering and compression (0: up to 4).")
@click.option(
    "--expression-shift",
    default=0.0,
    show_default=True,
    help="A batch effect of this sample's own: SD of the log factor on each non-marker gene's baseline "
    "(half of it on the sequencing depth); e.g. 1.0. 0: none.",
)
@click.option(
    "--crowded",
    is_flag=True,
    help="Crowded tissue: pack half the cells into regions where nuclei touch, as in dense epithelium or lymphoid "
    "tissue; the truth's 'touching' column says whose do.",
)
@click.option(
    "--crowding",
    type=click.FloatRange(0, 1),
    default=None,
    help="Share of the cells in crowded regions (0.5 with --crowded; 0: none).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def synth(
    out: Path,
    n_cells: int,
    width: int,
    height: int,
    version: str,
    seed: int,
    null: bool,
    null_regions: bool,
    n_classes: int,
    codec: str,
    csv: bool,
    region: str | None,
    workers: int,
    expression_shift: float,
    crowded: bool,
    crowding: float | None,
    overwrite: bool,
) -> None:
    """Write a synthetic Xenium bundle to OUT and its ground truth to OUT.truth.parquet (beside it)."""
    from xenium_assets.progress import TqdmProgress
    from xenium_assets.synth import SynthParams, generate_bundle
    from xenium_assets.synth.generate import CROWDED_SHARE

    if crowding is None:
        crowding = CROWDED_SHARE if crowded else 0.0
    try:
        params = SynthParams(
            n_cells=n_cells,
            width=width,
            height=height,
            version=version,
            seed=seed,
            null=null,
            null_regions=null_regions,
            n_classes=n_classes,
            codec=codec,
            csv=csv,
            region_name=region,
            workers=workers,
            expression_shift=expression_shift,
            crowding=crowding,
        )
        result = generate_bundle(out, params, overwrite=overwrite, progress=TqdmProgress())
    except (ValueError, FileExistsError) as exc:
        _fail(str(exc))
    click.echo(
        f"wrote {result.bundle} ({result.n_cells} cells, {result.n_nuclei} nuclei, "
        f"{result.n_transcripts} transcripts); truth: {result.truth}"
    )


def _channel(value: str | None) -> str | int | None:
    """``--channel``: an index when it is a number, else a channel name."""
    return int(value) if value is not None and value.isdigit() else value


def _origin(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        x, y = (float(v) for v in value.split(","))
    except ValueError as exc:
        raise click.BadParameter("expected X,Y in µm, e.g. 1000,1000") from exc
    return x, y


@main.command()
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option("--sample", "key", default=None, help="Partition key (default: from the folder name).")
@click.option("--pixel-size", type=float, default=None, help="µm per pixel, for bundles that do not record it.")
@click.option("--origin", default=None, help="X,Y µm of the image's top-left corner, for cropped exports.")
def add(bundle_dir: Path, key: str | None, pixel_size: float | None, origin: str | None) -> None:
    """Register BUNDLE_DIR as a sample partition of the project's Dagster instance.

    The bundle is validated first (a broken one is refused with the reason); adding the same bundle
    again is a no-op, and so is adding a copy of a registered run from another folder (same experiment,
    region and files: "already registered as KEY").
    """
    from xenium_assets.bundle.errors import BundleError
    from xenium_assets.bundle.validate import inspect_bundle
    from xenium_assets.defs.partitions import SAMPLES
    from xenium_assets.registry import AlreadyRegistered, SampleRegistry

    paths = ProjectPaths.default()
    registry = SampleRegistry(paths.samples_dir)
    xy = _origin(origin)
    if registry.find_bundle(bundle_dir) is None:
        twin = registry.copy_of(bundle_dir) if Path(bundle_dir).is_dir() else None
        if twin is not None:  # before validating: a copy of a large run is recognised from its files' sizes
            click.echo(f"skipped: {Path(bundle_dir).resolve()} is already registered as {twin.key} ({twin.bundle_dir})")
            return
        try:
            inspect_bundle(bundle_dir, pixel_size_um=pixel_size, image_origin_um=xy or (0.0, 0.0))
        except BundleError as exc:
            _fail(f"refused: {exc}")
    try:
        entry, created = registry.register(bundle_dir, key, pixel_size_um=pixel_size, image_origin_um=xy)
    except AlreadyRegistered as exc:
        click.echo(f"skipped: {exc}")
        return
    except ValueError as exc:
        _fail(str(exc))
    instance = project_instance(paths)
    if not instance.has_dynamic_partition(SAMPLES, entry.key):
        instance.add_dynamic_partitions(SAMPLES, [entry.key])
        created = True
    if created:
        click.echo(f"added sample {entry.key!r} -> {entry.bundle_dir}")
    else:
        click.echo(f"sample {entry.key!r} already registered for {entry.bundle_dir}: nothing to do")


@main.command()
@click.argument("sample")
@click.option("--to", "target", type=click.Choice(["spatialdata", "explorer"]), required=True)
@click.argument("out", type=click.Path(path_type=Path))
def export(sample: str, target: str, out: Path) -> None:
    """Write SAMPLE's image, boundaries, labels and predictions as a SpatialData zarr (OUT.zarr), or its labels and
    predictions as Xenium Explorer cell-group CSVs (into the folder OUT)."""
    from xenium_assets.export import ExportError, export_explorer, export_spatialdata

    paths = ProjectPaths.default()
    try:
        if target == "spatialdata":
            click.echo(f"wrote {export_spatialdata(paths, sample, out)} (open with spatialdata.read_zarr)")
        else:
            for name, path in export_explorer(paths, sample, out).items():
                click.echo(f"wrote {path} ({name}; Xenium Explorer: Cell groups > Upload)")
    except ExportError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("add-image")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--key", default=None, help="Partition key (default: from the file name).")
@click.option("--pixel-size", type=float, default=None, help="µm per pixel, where the image's metadata has none.")
@click.option("--channel", default=None, help="The DAPI channel's name or index, where no channel is called DAPI.")
def add_image(image: Path, key: str | None, pixel_size: float | None, channel: str | None) -> None:
    """Add a DAPI-only IMAGE (OME-TIFF, TIFF or a Xenium bundle folder) as an image partition for cell_predictions.
    The image is opened first: one without a pixel size or a DAPI channel is refused with the fix."""
    from xenium_assets.defs.partitions import IMAGES
    from xenium_assets.images.entries import ImageRegistry

    paths = ProjectPaths.default()
    try:
        entry, created = ImageRegistry(paths).add(image, key, pixel_size_um=pixel_size, channel=_channel(channel))
    except ValueError as exc:
        _fail(f"refused: {exc}")
    instance = project_instance(paths)
    if not instance.has_dynamic_partition(IMAGES, entry.key):
        instance.add_dynamic_partitions(IMAGES, [entry.key])
        created = True
    if created:
        click.echo(f"added image {entry.key!r} -> {entry.path} (materialize cell_predictions for it)")
    else:
        click.echo(f"image {entry.key!r} already added for {entry.path}: nothing to do")


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--model",
    default=None,
    help="Classifier: NAME/VERSION of a registered model, or a model folder (default: the latest registered version).",
)
@click.option(
    "--segmenter",
    default=None,
    help="'classical', or NAME/VERSION of a registered segmenter (default: the latest registered one, else classical).",
)
@click.option("--pixel-size", type=float, default=None, help="µm per pixel, where the image's metadata has none.")
@click.option("--channel", default=None, help="The DAPI channel's name or index, where no channel is called DAPI.")
@click.option("--nucleus-diameter", type=float, default=None, help="Nucleus diameter in µm (default: the segmenter's).")
@click.option("--workers", default=2, show_default=True, help="dask worker processes.")
@click.option(
    "--tile",
    "tile_px",
    default=PredictOptions.tile_px,
    show_default=True,
    help="Tile side in pixels (a multiple of 1024).",
)
def predict(
    image: Path,
    out: Path,
    model: str | None,
    segmenter: str | None,
    pixel_size: float | None,
    channel: str | None,
    nucleus_diameter: float | None,
    workers: int,
    tile_px: int,
) -> None:
    """Segment the nuclei of a DAPI-only IMAGE (OME-TIFF, TIFF or a Xenium bundle) and classify each with a trained
    model; write OUT/nuclei.parquet (GeoParquet), labels.zarr, spatialdata.zarr and overview.png."""
    from xenium_assets.prediction.command import predict_from_shell

    try:
        for line in predict_from_shell(
            ProjectPaths.default(),
            image,
            out,
            model=model,
            segmenter=segmenter,
            pixel_size_um=pixel_size,
            channel=_channel(channel),
            nucleus_diameter_um=nucleus_diameter,
            workers=workers,
            tile_px=tile_px,
            echo=click.echo,
        ):
            click.echo(line)
    except ValueError as exc:  # ImageError, ModelNotFound, ModelInputError: one line naming the file and the fix
        _fail(str(exc))


@main.command()
def samples() -> None:
    """List registered samples and their bundles."""
    from xenium_assets.registry import SampleRegistry

    entries = SampleRegistry(ProjectPaths.default().samples_dir).entries()
    if not entries:
        click.echo("no samples registered (xenium-assets add BUNDLE_DIR)")
    for e in entries:
        click.echo(f"{e.key}\t{e.bundle_dir}")


@main.command()
@click.option(
    "--sample", "samples", multiple=True, help="Build from this sample (repeat; default: every sample with a qc_adata)."
)
@click.option(
    "--method",
    type=click.Choice(["leiden", "markers", "reference", "xenium_graphclust"]),
    default="leiden",
    show_default=True,
)
@click.option("--resolution", default=0.5, show_default=True, help="leiden: higher gives more, smaller clusters.")
@click.option("--markers-file", type=click.Path(exists=True), default=None, help="markers: YAML class -> genes.")
@click.option("--reference-file", type=click.Path(exists=True), default=None, help="reference: an annotated .h5ad.")
@click.option("--max-cells", default=200_000, show_default=True, help="Cells drawn from the samples, at most.")
@click.option("--no-labels", is_flag=True, help="Build the reference only; do not place the samples in it.")
def reference(
    samples: tuple[str, ...],
    method: str,
    resolution: float,
    markers_file: str | None,
    reference_file: str | None,
    max_cells: int,
    no_labels: bool,
) -> None:
    """Build a new label reference (label_reference), then place every sample's cells in it (cell_labels).

    Shards are never re-cut: training joins the new labels by key. Under `make dev` the automation would also
    relabel the samples once the reference changes; --no-labels leaves that to it.
    """
    from xenium_assets.runs.reference import rebuild_reference

    config = {
        "method": method,
        "resolution": resolution,
        "markers_file": markers_file,
        "reference_file": reference_file,
        "max_cells": max_cells,
    }
    if samples:
        config["samples"] = list(samples)
    paths = ProjectPaths.default()
    try:
        lines = rebuild_reference(paths, project_instance(paths), config, relabel=not no_labels, echo=click.echo)
    except RuntimeError as exc:
        _fail(str(exc))
    for line in lines:
        click.echo(line)


@main.command()
@click.option("--cells", "n_cells", default=1500, show_default=True, help="Cells per demo bundle.")
@click.option("--size", default=2048, show_default=True, help="Image side in pixels.")
@click.option(
    "--segmenter-steps", type=int, default=None, help="Training steps of the nucleus segmenter (default: its own)."
)
def demo(n_cells: int, size: int, segmenter_steps: int | None) -> None:
    """Generate synthetic demo bundles (once), register them, and materialize every asset; then predict a third,
    held-out slide from its DAPI image alone."""
    from xenium_assets.runs.demo import run_demo

    paths = ProjectPaths.default()
    instance = project_instance(paths)
    lines = run_demo(paths, instance, n_cells=n_cells, size=size, segmenter_steps=segmenter_steps, echo=click.echo)
    for line in lines:
        click.echo(line)


@main.command()
@click.argument("sample")
@click.option("--gene", "genes", multiple=True, help="Show this gene's transcripts as points (repeat for more genes).")
@click.option(
    "--screenshot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Render the first view without a screen (private Xvfb), save it as this PNG and exit.",
)
def view(sample: str, genes: tuple[str, ...], screenshot: Path | None) -> None:
    """Open SAMPLE in napari: DAPI pyramid, nuclei and cells, expression labels, test-tile predictions and
    a class widget with training patches; or a prediction (its DAPI, nuclei and predicted classes): an added image's
    cell_predictions by its key, or the OUT folder of `xenium-assets predict`. Needs the viewer extra:
    pip install -e '.[viewer]'."""
    import time
    from contextlib import nullcontext

    from xenium_assets.bundle.errors import BundleError
    from xenium_assets.layout import PredictionFiles
    from xenium_assets.progress import TqdmProgress
    from xenium_assets.viewer.data import ViewerError, load_view_data
    from xenium_assets.viewer.display import DisplayUnavailable, virtual_display

    start = time.perf_counter()
    try:
        import napari

        from xenium_assets.viewer.app import build_viewer, save_screenshot
    except ImportError as exc:
        _fail(f"the viewer needs napari and Qt ({exc.name or exc}): pip install -e '.[viewer]'")
    if screenshot is None and sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        _fail("no screen (DISPLAY is unset): run it on a desktop, or save a picture with --screenshot PNG")
    try:
        paths = ProjectPaths.default()
        out = PredictionFiles(Path(sample))
        if out.summary.exists():  # the OUT folder of `xenium-assets predict`
            predicted, image_only = out, True
        else:
            predicted = paths.predictions(sample)
            image_only = not paths.raw_bundle(sample).manifest.exists() and predicted.summary.exists()
        data = None if image_only else load_view_data(paths, sample, genes, TqdmProgress())
        with virtual_display() if screenshot else nullcontext():
            if image_only:
                from xenium_assets.viewer.predictions import build_prediction_viewer

                viewer = build_prediction_viewer(predicted, Path(sample).name, report=click.echo)
            else:
                viewer = build_viewer(data, report=click.echo)
            if screenshot is None:
                click.echo(f"first view in {time.perf_counter() - start:.1f} s")
                napari.run()
                return
            try:
                save_screenshot(viewer, screenshot)
            finally:
                viewer.close()
            click.echo(f"first view in {time.perf_counter() - start:.1f} s; saved {screenshot}")
    except (ViewerError, BundleError, DisplayUnavailable) as exc:
        _fail(str(exc))


def _print_figures(figures: dict, as_json: bool) -> None:
    """A benchmark's figures, one per line, and optionally as one JSON object on the last line."""
    width = max(map(len, figures))
    for k, v in figures.items():
        click.echo(f"{k:>{width}}: {v}")
    if as_json:
        click.echo(json.dumps(figures))


JSON_FLAG = click.option(
    "--json", "as_json", is_flag=True, help="Print the figures as one JSON object on the last line."
)
BENCH_CACHE = click.option(
    "--cache",
    type=click.Path(path_type=Path),
    default=Path("data/bench"),
    show_default=True,
    help="Where generated bundles are kept between runs (shared by the benchmarks).",
)


@main.group()
def bench() -> None:
    """Benchmarks (slow; not part of the test suite)."""


@bench.command("synth")
@click.option("--cells", "n_cells", default=100_000, show_default=True)
@click.option("--size", default=20_000, show_default=True, help="Image side in pixels.")
@click.option("--version", default="3", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Keep the bundle here (default: temp).")
@JSON_FLAG
def bench_synth(n_cells: int, size: int, version: str, out: Path | None, as_json: bool) -> None:
    """Time and peak memory of generating a large synthetic bundle."""
    from xenium_assets.bench import bench_synth as run

    figures = run(n_cells=n_cells, size=size, version=version, out=out)
    _print_figures(figures, as_json)


@bench.command("patches")
@click.option("--cells", "n_cells", default=100_000, show_default=True, help="Cells of the large slide.")
@click.option("--size", default=20_000, show_default=True, help="Side of the large slide in pixels.")
@click.option("--small-cells", default=25_000, show_default=True, help="Cells of the small slide (memory check).")
@click.option("--small-size", default=10_000, show_default=True, help="Side of the small slide in pixels.")
@click.option(
    "--workers", default=2, show_default=True, help="dask worker processes (and decode threads of the floor)."
)
@click.option("--sample-cells", default=200, show_default=True, help="Cells timed for the baselines.")
@BENCH_CACHE
@JSON_FLAG
def bench_patches(
    n_cells: int,
    size: int,
    small_cells: int,
    small_size: int,
    workers: int,
    sample_cells: int,
    cache: Path,
    as_json: bool,
) -> None:
    """Patch extraction against the decode floor, halo-direct reads, the seed approach and ImageTilesDataset."""
    from xenium_assets.bench import bench_patches as run

    figures = run(
        n_cells=n_cells,
        size=size,
        small_cells=small_cells,
        small_size=small_size,
        workers=workers,
        sample_cells=sample_cells,
        cache=cache,
    )
    _print_figures(figures, as_json)


@bench.command("labels")
@click.option(
    "--h5",
    type=click.Path(exists=True, path_type=Path),
    default=Path("../shared/real_xenium/xenium_hbonemarrow_cfm/cell_feature_matrix.h5"),
    show_default=True,
    help="A cell_feature_matrix.h5 (default: the real 84,518-cell bone-marrow matrix).",
)
@click.option("--samples", "n_samples", default=32, show_default=True, help="Poisson-resampled copies of the matrix.")
@click.option("--max-cells", default=200_000, show_default=True, help="Cells in the reference's sketch, at most.")
@click.option("--add-cells", default=100_000, show_default=True, help="Cells of the sample added afterwards.")
@JSON_FLAG
def bench_labels(h5: Path, n_samples: int, max_cells: int, add_cells: int, as_json: bool) -> None:
    """The label reference of N samples and every sample placed in it, then one more sample added: times, memory."""
    from xenium_assets.bench import bench_labels as run

    figures = run(h5=h5, n_samples=n_samples, max_cells=max_cells, add_cells=add_cells)
    _print_figures(figures, as_json)


@bench.command("calibration")
@click.option("--replicates", default=1000, show_default=True, help="Simulated test sets per case.")
@click.option(
    "--dependence",
    multiple=True,
    type=float,
    default=(0.2, 0.3),
    show_default=True,
    help="Share of cells predicted right in the power cases.",
)
@JSON_FLAG
def bench_calibration(replicates: int, dependence: tuple[float, ...], as_json: bool) -> None:
    """How often the signal test, and the cell-level shuffle, reject on simulated clumped test sets."""
    from xenium_assets.bench import bench_calibration as run

    _print_figures(run(replicates=replicates, dependence=dependence), as_json)


@bench.command("segmentation")
@click.option(
    "--real",
    type=click.Path(path_type=Path),
    default=Path("../shared/real_nuclei/dsb2018_stage1_test_fluo"),
    show_default=True,
    help="Real nuclear-stain images with hand-drawn nuclei (index.csv, images/, masks/).",
)
@click.option("--steps", type=int, default=None, help="Training steps (default: the segmenter's default).")
@click.option(
    "--tuning/--no-tuning",
    "use_tuning",
    default=True,
    show_default=True,
    help="Train on the real set's tuning images too (never on its held-out images).",
)
@click.option("--seed", default=0, show_default=True)
@BENCH_CACHE
@JSON_FLAG
def bench_segmentation(real: Path, steps: int | None, use_tuning: bool, seed: int, cache: Path, as_json: bool) -> None:
    """Train the learned nucleus segmenter; compare it with the classical one on held-out synthetic tiles and
    held-out real images (object F1 at IoU 0.5, mean matched IoU, recall of touching nuclei)."""
    from xenium_assets.bench import bench_segmentation as run

    figures = run(real=real, cache=cache, steps=steps, use_tuning=use_tuning, seed=seed)
    _print_figures(figures, as_json)


@bench.command("predict")
@click.option("--cells", "n_cells", default=100_000, show_default=True, help="Cells of the large image.")
@click.option("--size", default=20_000, show_default=True, help="Side of the large image in pixels.")
@click.option("--small-cells", default=25_000, show_default=True, help="Cells of the small image (memory check).")
@click.option("--small-size", default=10_000, show_default=True, help="Side of the small image in pixels.")
@click.option("--workers", default=2, show_default=True, help="dask worker processes (1 thread each).")
@click.option(
    "--segmenter",
    type=click.Choice(["learned", "classical"]),
    default="learned",
    show_default=True,
    help="learned: a U-Net trained once on synthetic DAPI (kept in --cache); classical: threshold and watershed.",
)
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A trained classifier folder (model.json); default: a small one trained once on synthetic bundles.",
)
@click.option(
    "--tile-px", default=PredictOptions.tile_px, show_default=True, help="Side of the tiles that run in parallel."
)
@BENCH_CACHE
@JSON_FLAG
def bench_predict(
    n_cells: int,
    size: int,
    small_cells: int,
    small_size: int,
    workers: int,
    segmenter: str,
    model: Path | None,
    tile_px: int,
    cache: Path,
    as_json: bool,
) -> None:
    """Nuclei segmented and classified on a large synthetic DAPI image: seconds, stage seconds, nuclei a second,
    each dask worker's peak memory (and on a smaller image)."""
    from xenium_assets.bench import bench_predict as run

    figures = run(
        n_cells=n_cells,
        size=size,
        small_cells=small_cells,
        small_size=small_size,
        workers=workers,
        segmenter=segmenter,
        model=model,
        cache=cache,
        tile_px=tile_px,
    )
    _print_figures(figures, as_json)


@bench.command("view")
@click.option("--cells", "n_cells", default=100_000, show_default=True)
@click.option("--size", default=20_000, show_default=True, help="Image side in pixels.")
@BENCH_CACHE
@JSON_FLAG
def bench_view(n_cells: int, size: int, cache: Path, as_json: bool) -> None:
    """Time to the viewer's first drawn view of a large sample, against reading its full-resolution DAPI."""
    from xenium_assets.bench import bench_view as run

    _print_figures(run(n_cells=n_cells, size=size, cache=cache), as_json)


if __name__ == "__main__":
    main()
