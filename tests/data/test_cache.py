"""The disk cache of prepared images: hits, invalidation, atomic writes, several writers."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fphtr.data.cache import ImageCache, load_prepared
from fphtr.data.geometry import ImageError


def _write(path: Path, seed: int = 0, size=(300, 500)) -> Path:
    rng = np.random.default_rng(seed)
    img = np.full(size, 255, np.uint8)
    img[100:200, 50:450] = rng.integers(0, 200, (100, 400))
    Image.fromarray(img).save(path)
    return path


def test_second_load_reads_the_cache_and_matches(tmp_path):
    src = _write(tmp_path / "form.png")
    cache = ImageCache(tmp_path / "cache")
    crop = (40, 90, 460, 210)
    first = cache.load(src, 0.5, 1000, 1000, crop)
    assert (cache.hits, cache.misses) == (0, 1)
    second = cache.load(src, 0.5, 1000, 1000, crop)
    assert (cache.hits, cache.misses) == (1, 1)
    assert np.array_equal(first, second) and first.shape == (60, 210)
    assert np.array_equal(first, load_prepared(src, 0.5, 1000, 1000, crop))
    entries = list((tmp_path / "cache").rglob("*"))
    assert [p.suffix for p in entries if p.is_file()] == [".png"]  # no temporary files left


def test_a_changed_file_or_setting_is_a_new_entry(tmp_path):
    src = _write(tmp_path / "line.png")
    cache = ImageCache(tmp_path / "cache")
    cache.load(src, 0.5, 1000, 1000)
    cache.load(src, 0.25, 1000, 1000)  # another scale
    cache.load(src, 0.5, 100, 1000)  # another frame
    cache.load(src, 0.5, 1000, 1000, (0, 0, 100, 100))  # another crop
    assert cache.misses == 4
    _write(src, seed=1, size=(310, 500))  # the file changes (size and mtime)
    os.utime(src, ns=(1, 1))
    new = cache.load(src, 0.5, 1000, 1000)
    assert cache.misses == 5 and new.shape == (155, 250)


def test_a_damaged_entry_is_rebuilt(tmp_path, caplog):
    src = _write(tmp_path / "word.png")
    cache = ImageCache(tmp_path / "cache")
    good = cache.load(src, 0.5, 1000, 1000)
    entry = cache.entry(cache.key(src, 0.5, 1000, 1000, None))
    entry.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(cache.load(src, 0.5, 1000, 1000), good)
    assert "rebuilding" in caplog.text


def test_an_unwritable_cache_never_stops_loading(tmp_path, caplog):
    src = _write(tmp_path / "word.png")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    cache = ImageCache(blocker)
    with caplog.at_level(logging.WARNING):
        a = cache.load(src, 0.5, 1000, 1000)
        b = cache.load(src, 0.5, 1000, 1000)
    assert np.array_equal(a, b) and caplog.text.count("cannot write") == 1


def test_missing_and_empty_files_raise_image_errors(tmp_path):
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(ImageError, match="no such file"):
        cache.load(tmp_path / "nothing.png", 0.5, 100, 100)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="0 bytes"):
        cache.load(tmp_path / "empty.png", 0.5, 100, 100)


def _load_all(args: tuple[str, list[str]]) -> list[tuple[int, int]]:
    cache_dir, paths = args
    cache = ImageCache(cache_dir)
    return [cache.load(p, 0.5, 1000, 1000).shape for p in paths]


def test_several_processes_fill_the_same_cache(tmp_path):
    paths = [str(_write(tmp_path / f"{i}.png", seed=i)) for i in range(6)]
    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map(_load_all, [(str(tmp_path / "cache"), paths)] * 4)
    assert all(r == results[0] for r in results)
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(files) == 6 and all(p.suffix == ".png" for p in files)
    assert _load_all((str(tmp_path / "cache"), paths)) == results[0]
