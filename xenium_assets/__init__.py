"""xenium-assets: Xenium bundles to expression-labelled DAPI training data, as Dagster assets.

The package is a plain library (``bundle``, ``synth``, ...) with a thin Dagster layer in ``defs``;
importing the library does not import Dagster.
"""

__version__ = "0.1.0"
