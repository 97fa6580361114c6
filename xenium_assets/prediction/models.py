"""Which classifier and which segmenter a prediction uses: registered MLflow versions (the latest by default), a
model folder, or the classical segmenter; always named, so every nucleus says what found and classified it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xenium_assets.layout import ModelFiles, ProjectPaths, SegmenterFiles
from xenium_assets.model_store import CLASSIFIER_MODEL, SEGMENTER_MODEL, ModelNotFound, parse_model, resolve
from xenium_assets.prediction.tiles import SegmenterChoice

CLASSICAL = "classical"
DEFAULT_NUCLEUS_DIAMETER_UM = 7.0
"""A mammalian nucleus's typical diameter: the classical segmenter's scale when no learned segmenter gives one."""


@dataclass(frozen=True)
class ChosenClassifier:
    folder: Path
    version: str
    """NAME/VERSION of the registered model, or the folder's name for a model given by its folder."""


def choose_classifier(paths: ProjectPaths, tracking_uri: str, model: str | None) -> ChosenClassifier:
    """``model``: a model folder, ``NAME[/VERSION]``, or None for the latest registered classifier. A registered
    version whose files are not in the project is fetched from MLflow's artifacts."""
    if model is not None and ModelFiles(Path(model)).card.exists():
        return ChosenClassifier(Path(model).resolve(), Path(model).resolve().name)
    name, version = parse_model(model) if model else (CLASSIFIER_MODEL, None)
    found = resolve(tracking_uri, name, version, fix="materialize trained_model")
    folder = paths.model(found.run_id).folder
    if not ModelFiles(folder).card.exists():
        folder = _download(tracking_uri, found.run_id, "model", paths.models_dir / ".fetched" / found.run_id)
    return ChosenClassifier(folder, f"{name}/{found.version}")


def choose_segmenter(
    paths: ProjectPaths, tracking_uri: str, segmenter: str | None, nucleus_diameter_um: float | None = None
) -> tuple[SegmenterChoice, list[str]]:
    """``segmenter``: "classical", ``NAME[/VERSION]``, or None for the latest registered segmenter, or the classical
    one (with a note saying so) when none is registered. Returns the choice and its notes."""
    if segmenter == CLASSICAL:
        size = nucleus_diameter_um or DEFAULT_NUCLEUS_DIAMETER_UM
        return SegmenterChoice(CLASSICAL, CLASSICAL, size), []
    name, version = parse_model(segmenter) if segmenter else (SEGMENTER_MODEL, None)
    try:
        found = resolve(tracking_uri, name, version, fix="materialize nucleus_segmenter")
    except ModelNotFound as exc:
        if segmenter is not None:
            raise
        size = nucleus_diameter_um or DEFAULT_NUCLEUS_DIAMETER_UM
        note = f"no registered nucleus segmenter ({exc}); nuclei found by the classical segmenter instead"
        return SegmenterChoice(CLASSICAL, CLASSICAL, size), [note]
    files = paths.segmenter(found.run_id)
    if not files.checkpoint.exists():
        files = SegmenterFiles(
            _download(tracking_uri, found.run_id, "segmenter", paths.segmenters_dir / ".fetched" / found.run_id)
        )
    card = files.read_card()
    size = nucleus_diameter_um or float(card.get("nucleus_diameter_um", DEFAULT_NUCLEUS_DIAMETER_UM))
    return SegmenterChoice("learned", f"{name}/{found.version}", size, str(files.checkpoint)), []


def _download(tracking_uri: str, run_id: str, artifact_path: str, into: Path) -> Path:
    """A run's logged files (a folder of its artifacts), for a version trained on another machine."""
    import mlflow

    into.mkdir(parents=True, exist_ok=True)
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=str(into), tracking_uri=tracking_uri
        )
    )
