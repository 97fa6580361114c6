"""Sample registry: keys, idempotent registration, collisions."""

from __future__ import annotations

import pytest

from xenium_assets.registry import SampleRegistry, sanitize_key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("output-XETG00046__0010660__Region_1__20230706", "output-XETG00046__0010660__Region_1__20230706"),
        ("Region 1 [left], lung|A", "Region_1_left_lung_A"),
        ("a...b", "a.b"),
        ("///", "sample"),
    ],
)
def test_sanitize_key(text, key):
    assert sanitize_key(text) == key


def test_register_is_idempotent_and_collisions_are_deterministic(tmp_path):
    reg = SampleRegistry(tmp_path / "samples")
    one, two = tmp_path / "x" / "run", tmp_path / "y" / "run"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    entry, created = reg.register(one)
    assert created and entry.key == "run"
    again, created = reg.register(one)
    assert not created and again == entry
    other, created = reg.register(two)
    assert created and other.key.startswith("run-") and len(other.key) == len("run-") + 6
    assert SampleRegistry(tmp_path / "samples").register(two)[0].key == other.key
    assert [e.key for e in reg.entries()] == sorted([entry.key, other.key])


def test_a_copy_of_a_registered_run_is_recognised(tmp_path):
    """The same experiment, region and files under another folder name is the same run; another region, other file
    sizes or a folder without files are not."""
    import json

    from xenium_assets.registry import AlreadyRegistered

    def run(folder, region: str, cells: bytes = b"cells") -> None:
        folder.mkdir(parents=True)
        (folder / "experiment.xenium").write_text(json.dumps({"run_name": "r1", "region_name": region}))
        (folder / "cells.parquet").write_bytes(cells)

    reg = SampleRegistry(tmp_path / "samples")
    run(tmp_path / "a", "Region_1")
    reg.register(tmp_path / "a", "s1")
    run(tmp_path / "copy", "Region_1")
    with pytest.raises(AlreadyRegistered, match=r"copy is already registered as s1 \(the same experiment"):
        reg.register(tmp_path / "copy", "s2")
    run(tmp_path / "region2", "Region_2")
    run(tmp_path / "resized", "Region_1", b"other cells")
    assert reg.register(tmp_path / "region2")[1] and reg.register(tmp_path / "resized")[1]
    (tmp_path / "empty1").mkdir()
    (tmp_path / "empty2").mkdir()
    assert reg.register(tmp_path / "empty1")[1] and reg.register(tmp_path / "empty2")[1]


def test_register_refuses_conflicts(tmp_path):
    reg = SampleRegistry(tmp_path / "samples")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    reg.register(a, "s1", pixel_size_um=1.5, image_origin_um=(10.0, 20.0))
    assert reg.get("s1").pixel_size_um == 1.5 and reg.get("s1").image_origin_um == (10.0, 20.0)
    with pytest.raises(ValueError, match="already registered for"):
        reg.register(b, "s1")
    with pytest.raises(ValueError, match="already registered as sample 's1'"):
        reg.register(a, "s2")
    with pytest.raises(ValueError, match="not a valid partition key"):
        reg.register(b, "bad key")
    with pytest.raises(KeyError, match="xenium-assets add"):
        reg.get("nope")
