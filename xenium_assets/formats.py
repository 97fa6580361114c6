"""File names, column keys and vocabularies of the Xenium output format, in one place.

Every reader and writer in the package takes its names from here, so a format change (a renamed file,
a new feature type) is a one-line edit. The values follow the XOA releases as the field's readers
(spatialdata-io, Seurat, SFE) understand them.
"""

from __future__ import annotations

from enum import StrEnum


class XeniumFile(StrEnum):
    """Paths inside a bundle, relative to its root."""

    EXPERIMENT = "experiment.xenium"
    CELLS_PARQUET = "cells.parquet"
    CELLS_CSV = "cells.csv.gz"
    CELL_BOUNDARIES_PARQUET = "cell_boundaries.parquet"
    CELL_BOUNDARIES_CSV = "cell_boundaries.csv.gz"
    NUCLEUS_BOUNDARIES_PARQUET = "nucleus_boundaries.parquet"
    NUCLEUS_BOUNDARIES_CSV = "nucleus_boundaries.csv.gz"
    TRANSCRIPTS_PARQUET = "transcripts.parquet"
    TRANSCRIPTS_CSV = "transcripts.csv.gz"
    MATRIX_H5 = "cell_feature_matrix.h5"
    MATRIX_MTX_DIR = "cell_feature_matrix"
    MATRIX_ZARR = "cell_feature_matrix.zarr.zip"
    CELLS_ZARR = "cells.zarr.zip"
    ANALYSIS_DIR = "analysis"
    GRAPHCLUST = "analysis/clustering/gene_expression_graphclust/clusters.csv"
    # v1 keeps single 2D images at the top level ...
    MORPHOLOGY_FOCUS_V1 = "morphology_focus.ome.tif"
    MORPHOLOGY_MIP_V1 = "morphology_mip.ome.tif"
    # ... v2 and later keep one file per channel in a folder.
    MORPHOLOGY_FOCUS_DIR = "morphology_focus"


MTX_FILES = ("barcodes.tsv.gz", "features.tsv.gz", "matrix.mtx.gz")
# Inside analysis/: analysis/clustering/<method>/clusters.csv and analysis/pca/<method>/projection.csv.
CLUSTERS_CSV = "clusters.csv"
PROJECTION_CSV = "projection.csv"

# v2/v3: morphology_focus/morphology_focus_0000.ome.tif ...; v4: morphology_focus/ch0000_dapi.ome.tif ...
FOCUS_V2_NAME = "morphology_focus_{:04d}.ome.tif"
FOCUS_V4_DAPI_NAME = "ch0000_dapi.ome.tif"

# Channel names of the multimodal segmentation kit, in file order (spatialdata-io's XeniumKeys).
FOCUS_CHANNELS = ("DAPI", "ATP1A1/CD45/E-Cadherin", "18S", "AlphaSMA/Vimentin")
DAPI = "DAPI"


def v4_channel_file(index: int, name: str) -> str:
    """XOA 4 names channel files `chNNNN_<lower-case name>.ome.tif` with '/' turned into '_'."""
    return f"ch{index:04d}_{name.lower().replace('/', '_')}.ome.tif"


class Col(StrEnum):
    """Column names shared by the cells, boundaries and transcripts tables."""

    CELL_ID = "cell_id"
    X_CENTROID = "x_centroid"
    Y_CENTROID = "y_centroid"
    CELL_AREA = "cell_area"
    NUCLEUS_AREA = "nucleus_area"
    NUCLEUS_COUNT = "nucleus_count"
    VERTEX_X = "vertex_x"
    VERTEX_Y = "vertex_y"
    LABEL_ID = "label_id"
    FEATURE_NAME = "feature_name"
    X_LOCATION = "x_location"
    Y_LOCATION = "y_location"
    Z_LOCATION = "z_location"
    QV = "qv"


class FeatureType(StrEnum):
    """`feature_type` values of the cell-feature matrix."""

    GENE = "Gene Expression"
    NEG_PROBE = "Negative Control Probe"
    NEG_CODEWORD = "Negative Control Codeword"
    UNASSIGNED = "Unassigned Codeword"
    DEPRECATED = "Deprecated Codeword"
    GENOMIC = "Genomic Control"
    BLANK = "Blank Codeword"
    PROTEIN = "Protein Expression"


CONTROL_FEATURE_TYPES = frozenset(
    {
        FeatureType.NEG_PROBE,
        FeatureType.NEG_CODEWORD,
        FeatureType.UNASSIGNED,
        FeatureType.DEPRECATED,
        FeatureType.GENOMIC,
        FeatureType.BLANK,
    }
)

# Transcripts that fall in no cell: -1 in XOA 1.0 (integer ids), "UNASSIGNED" from 1.3 on.
UNASSIGNED_INT = -1
UNASSIGNED_STR = "UNASSIGNED"

# Xenium's native pixel size (µm per pixel of the morphology images).
XENIUM_PIXEL_SIZE_UM = 0.2125


class ReferenceImagesFile(StrEnum):
    """A folder of nuclear-stain images with hand-drawn nuclei (../shared/real_nuclei/<set>/, as its SOURCE.md
    describes): an index, and per image id one TIFF image and one TIFF of instance labels."""

    INDEX = "index.csv"
    IMAGES_DIR = "images"
    MASKS_DIR = "masks"
    SUFFIX = ".tif"
