"""Fitted maps and heads are written atomically: a crash mid-write never leaves a partial file."""

import numpy as np
import pytest
import safetensors.numpy

from silos.alignment import AffineMap
from silos.head import LinearHead
from silos.saving import atomic_write, save_arrays


def fitted_map(seed: int) -> AffineMap:
    rng = np.random.default_rng(seed)
    return AffineMap(alpha=0.1).fit(rng.normal(size=(40, 6)), rng.normal(size=(40, 3)))


def test_a_crash_mid_write_keeps_the_previous_map_and_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "maps" / "bob"
    old = fitted_map(0)
    old.save(path)
    real_save = safetensors.numpy.save_file

    def crash_after_half(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as handle:  # half a file on disk, then the process "dies"
            handle.truncate(handle.seek(0, 2) // 2)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr("silos.saving.save_file", crash_after_half)
    with pytest.raises(KeyboardInterrupt):
        fitted_map(1).save(path)
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == ["bob"]  # no temporary left behind
    loaded = AffineMap.load(path)
    np.testing.assert_array_equal(loaded.coef_, old.coef_)
    new = fitted_map(1)
    new.save(path)  # and the next write replaces it
    np.testing.assert_array_equal(AffineMap.load(path).coef_, new.coef_)


def test_a_crash_before_the_rename_leaves_no_file_for_a_first_write(tmp_path, monkeypatch):
    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("silos.saving.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_arrays(tmp_path / "head", {"kind": "LinearHead"}, {"coef": np.ones((2, 2))})
    assert list(tmp_path.iterdir()) == []


def test_head_round_trip_and_kind_check(tmp_path):
    rng = np.random.default_rng(0)
    head = LinearHead(max_iter=20).fit(rng.normal(size=(30, 4)), rng.integers(0, 3, 30),
                                       classes=["a", "b", "c"])
    head.save(tmp_path / "head")
    loaded = LinearHead.load(tmp_path / "head")
    assert loaded.classes_ == ["a", "b", "c"]
    np.testing.assert_array_equal(loaded.coef_, head.coef_)
    with pytest.raises(ValueError, match="not a 'AffineMap'"):
        AffineMap.load(tmp_path / "head")


def test_atomic_write_removes_its_temporary_on_failure(tmp_path):
    def boom(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "x.bin", boom)
    assert list(tmp_path.iterdir()) == []
