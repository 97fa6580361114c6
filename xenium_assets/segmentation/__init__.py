"""Nucleus segmentation from DAPI alone: a classical baseline, object-level quality against reference nuclei."""
