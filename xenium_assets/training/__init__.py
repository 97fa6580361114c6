"""Training and evaluation of the DAPI classifier.

``splits`` (buffered spatial blocks of whole tiles) -> ``data`` (the one place data enters training: a
LightningDataModule streaming the WebDataset shards) -> ``model`` (timm backbone in a LightningModule; knows
tensors, not files) -> ``train`` (the Trainer run) -> ``evaluate`` (the assessment: ``spatial_stats`` for block
bootstrap intervals and the shifted-label null, ``morphology`` for the baselines) -> ``report`` (figures and
documents); ``run`` ties them to shards on disk, and ``calibration`` simulates clumped test sets to check the
statistics.
"""
