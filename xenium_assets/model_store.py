"""Registered models in the project's MLflow store, by name and version: which run made a version, so that
predicting with "the classifier" or "the segmenter" always says which one, and asking for one that does not exist
says so in one line with the fix.

A model is named ``NAME`` (its latest version) or ``NAME/VERSION`` (``models:/NAME/VERSION`` and ``NAME/vN`` are
read too).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

LATEST = "latest"
CLASSIFIER_MODEL = "xenium-dapi-classifier"
"""The registered name of the classifier trained_model logs."""
SEGMENTER_MODEL = "xenium-nucleus-segmenter"
"""The registered name of the segmenter nucleus_segmenter logs."""
DEFAULT_FIX = "register a version of it (materialize the asset that trains it)"


class ModelNotFound(ValueError):
    """No such registered model version; the message is one line naming the model, its versions and the fix."""


class Resolved(NamedTuple):
    version: str
    run_id: str


def local_tracking_uri(data_dir: Path) -> str:
    """The embedded default store: SQLite under data/mlflow (MLflow 3 refuses plain file stores)."""
    return f"sqlite:///{Path(data_dir).resolve() / 'mlflow' / 'mlflow.db'}"


def parse_model(text: str) -> tuple[str, str | None]:
    """``NAME`` -> (NAME, None: the latest); ``NAME/VERSION`` -> (NAME, VERSION)."""
    ref = text.strip().removeprefix("models:/").rstrip("/")
    name, _, version = ref.rpartition("/") if "/" in ref else (ref, "", "")
    version = version.strip().lower().removeprefix("v")
    if not name:
        raise ModelNotFound(f"{text!r} names no model: give NAME or NAME/VERSION")
    if version in ("", LATEST):
        return name, None
    if not version.isdigit():
        raise ModelNotFound(f"{text!r}: the version after the last '/' must be a number or 'latest'")
    return name, _number(version)


def _number(version: str | int) -> str:
    """'3', 3, 'v3' and '03' are version 3."""
    text = str(version).strip().lower().removeprefix("v")
    return str(int(text)) if text.isdigit() else text


def model_uri(name: str, version: str) -> str:
    """MLflow's URI of a registered model version (``mlflow.pytorch.load_model`` reads it)."""
    return f"models:/{name}/{version}"


def resolve(tracking_uri: str, name: str, version: str | int | None = None, *, fix: str = DEFAULT_FIX) -> Resolved:
    """The registered version of ``name`` (the latest when ``version`` is None) and the run that logged it;
    ``fix`` says how to make one (e.g. "materialize nucleus_segmenter"). Raises ``ModelNotFound``."""
    from mlflow.tracking import MlflowClient

    if "'" in name:
        raise ModelNotFound(f"{name!r}: a registered model's name has no quote in it")
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        raise ModelNotFound(f"no MLflow store at {tracking_uri}, so no registered model {name!r}: {fix}")
    found = MlflowClient(tracking_uri).search_model_versions(f"name = '{name}'")
    by_version = {str(v.version): v for v in found}
    numbers = sorted(by_version, key=int)
    if not numbers:
        raise ModelNotFound(f"registered model {name!r} has no version in {tracking_uri}: {fix}")
    wanted = numbers[-1] if version is None else _number(version)
    if wanted not in by_version:
        raise ModelNotFound(
            f"registered model {name!r} has no version {version} (it has {', '.join(numbers)}): name one of those, "
            f"or none for the latest; to make a new one, {fix}"
        )
    return Resolved(wanted, by_version[wanted].run_id)
