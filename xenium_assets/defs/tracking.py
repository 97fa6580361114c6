"""MLflow tracking through dagster-mlflow, with the experiment's artifacts kept beside its store.

dagster-mlflow's resource creates a missing experiment with MLflow's default artifact location,
./mlruns relative to wherever the process runs. Creating the experiment first, with its artifacts
under the project's data folder, keeps everything the project writes in data/.

dagster-mlflow imports mlflow when it is imported: 2.0 of the 5.6 s it took to load the code location, which
every Dagster process does (the webserver, the daemon, each run and each step). Its resource and hook are
therefore imported when a run uses them, and only the two assets that track a run pay for mlflow.
"""

from importlib.metadata import version
from pathlib import Path
from typing import Any

from dagster import Field, HookDefinition, HookExecutionResult, InitResourceContext, Noneable, resource

from xenium_assets.model_store import CLASSIFIER_MODEL, SEGMENTER_MODEL, local_tracking_uri

EXPERIMENT = "xenium-assets"
REGISTERED_MODEL = CLASSIFIER_MODEL
TRAINED_BY = {REGISTERED_MODEL: "trained_model", SEGMENTER_MODEL: "nucleus_segmenter"}
"""The asset that registers each model's versions: the fix when a version is missing (``model_store.resolve``)."""
MODEL_PACKAGES = ("torch", "torchvision", "timm")
"""What loading the logged classifier needs (it is a pickled timm module)."""
SEGMENTER_PACKAGES = ("torch", "segmentation-models-pytorch", "timm")
"""What loading the logged segmenter network needs (a pickled segmentation-models-pytorch U-Net)."""


def pip_requirements(packages: tuple[str, ...] = MODEL_PACKAGES) -> list[str]:
    """The logged model's requirements, pinned to what is installed.

    Given explicitly because MLflow's inference of them re-imports the model in a subprocess: 19 s of the
    demo's training step, against 1 s to log the model with them given (and inference missed timm).
    """
    return [f"{name}=={version(name)}" for name in packages]


def tracking_uri(data_dir: Path) -> str:
    """The embedded default: a SQLite store under data/mlflow (MLflow 3 refuses plain file stores)."""
    return local_tracking_uri(data_dir)


def ensure_experiment(uri: str, name: str) -> str:
    """Create the experiment (artifacts in <store folder>/artifacts) unless it exists; returns its id."""
    from mlflow.tracking import MlflowClient

    artifacts = None
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        folder.mkdir(parents=True, exist_ok=True)
        artifacts = (folder / "artifacts").as_uri()
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name, artifact_location=artifacts)


@resource(
    config_schema={
        "experiment_name": Field(str, description="MLflow experiment name."),
        "mlflow_tracking_uri": Field(Noneable(str), default_value=None, description="MLflow tracking store or server."),
    },
    description="dagster-mlflow tracking, artifacts kept beside the store.",
)
def mlflow_tracking(init_context: InitResourceContext) -> Any:
    """dagster-mlflow's ``MlFlow`` resource (one MLflow run per Dagster run), after ``ensure_experiment``.

    Its config offers the two keys this project sets; the rest of dagster-mlflow's (a parent run, environment
    variables, extra tags) would need its schema, whose import is the cost avoided here."""
    from dagster_mlflow.resources import MlFlow

    config = init_context.resource_config
    if config.get("mlflow_tracking_uri"):
        ensure_experiment(config["mlflow_tracking_uri"], config["experiment_name"])
    return MlFlow(init_context)


def _end_mlflow_run(context, event_list) -> HookExecutionResult:
    from dagster_mlflow import end_mlflow_on_run_finished as hook

    return hook.hook_fn(context, event_list)


end_mlflow_on_run_finished = HookDefinition(
    name="end_mlflow_on_run_finished", hook_fn=_end_mlflow_run, required_resource_keys={"mlflow"}
)
"""dagster-mlflow's hook of the same name (it ends the MLflow run after the Dagster run's last step, or as failed
after a failed step), imported when it runs."""
