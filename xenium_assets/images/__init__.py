"""DAPI images from outside the Xenium pipeline, for applying a trained model to them.

``source`` opens any DAPI image tifffile reads (OME-TIFF, pyramid or not, or a plain TIFF; uint8 or uint16;
one channel or several, the DAPI one chosen by name or index) or the morphology image of a Xenium bundle, and
writes it as a DAPI store at the model's pixel size, out of core, with the same machinery as ``dapi_zarr``.
"""
