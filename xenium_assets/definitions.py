"""The code location: every asset, resource and job of xenium-assets.

Load it with `dagster dev` (workspace.yaml) or `dagster ... -m xenium_assets.definitions`.
"""

from dagster import Definitions

from xenium_assets.defs.cell_labels import cell_labels
from xenium_assets.defs.qc_adata import qc_adata
from xenium_assets.defs.raw_bundle import raw_bundle
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.paths import default_data_dir

defs = Definitions(
    assets=[raw_bundle, qc_adata, cell_labels],
    resources={"project": ProjectResource(data_dir=str(default_data_dir()))},
)
