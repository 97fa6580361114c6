"""Applying a trained model to a DAPI-only image: nuclei segmented, patches cut as in training, classes predicted."""
