"""Training and evaluation of the DAPI classifier.

``splits`` (spatial: whole tiles per split) -> ``data`` (the one place data enters training: a
LightningDataModule streaming the WebDataset shards) -> ``model`` (timm backbone in a
LightningModule; knows tensors, not files) -> ``train`` (the Trainer run) -> ``evaluate`` (test
metrics with confidence intervals, baselines, permutation test, saliency, report).
"""
