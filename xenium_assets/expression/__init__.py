"""Expression: the cell-feature matrix as AnnData, QC, normalisation."""
