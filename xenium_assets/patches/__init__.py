"""DAPI patches with nucleus and perinuclear masks, cut tile by tile and written as WebDataset shards.

``grid`` (tiles and patch geometry) -> ``dapi_store`` (the DAPI level transcoded once to a fast
chunked store) -> ``geometry`` (polygons split by tile, streamed) -> ``extract`` (per tile: masks
rasterised in one call per block, patches cut by vectorised indexing) -> ``shards`` (atomic tar
writing and the per-tile index).
"""
