"""The napari viewer (optional extra ``.[viewer]``). Only ``viewer.app`` imports napari or Qt; the
core package never imports this one."""
