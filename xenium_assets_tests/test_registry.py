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
