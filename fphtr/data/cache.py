"""A disk cache of decoded, cropped and resized images.

IAM's form scans are 2479 x 3542 PNGs: decoding one costs ~70 ms, every epoch. The cache keeps
the prepared image (after crop, `geometry.prepare` scale and frame) as a small PNG, keyed by
the source file's absolute path, modification time and size and by the crop, scale and frame,
so a changed file or a different data format never reads a stale entry.

Several DataLoader workers (or runs) may fill it at once: each entry is written to a temporary
file in the same folder and moved into place with an atomic rename, so a reader sees either
nothing or a complete file. Delete the folder at any time to reclaim the space.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from fphtr.data.geometry import load_image, prepare, to_grayscale

log = logging.getLogger(__name__)

_VERSION = 1  # bump when the preparation of cached images changes


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/fphtr/images, or ~/.cache/fphtr/images."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fphtr" / "images"


def load_prepared(
    path: str | Path,
    scale: float,
    max_height: int,
    max_width: int,
    crop: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Decode an image file, crop it to (x0, y0, x1, y1) in file pixels (clipped to the image)
    and prepare it with the geometry policy. Raises geometry.ImageError for unusable files."""
    image = to_grayscale(load_image(path))
    if crop is not None:
        h, w = image.shape
        x0, y0 = max(0, crop[0]), max(0, crop[1])
        x1, y1 = min(w, crop[2]), min(h, crop[3])
        if x1 > x0 and y1 > y0:  # an empty box (bad coordinates) keeps the whole image
            image = image[y0:y1, x0:x1]
    return prepare(image, scale, max_height, max_width)


class ImageCache:
    """`load(...)` = `load_prepared(...)`, decoded once and then read back from `directory`.
    With directory=None nothing is cached."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else None
        self._write_failed = False
        self.hits = self.misses = 0

    def key(
        self,
        path: Path,
        scale: float,
        max_height: int,
        max_width: int,
        crop: tuple[int, int, int, int] | None,
    ) -> str:
        st = path.stat()
        ident = (f"{_VERSION}|{path.resolve()}|{st.st_mtime_ns}|{st.st_size}|{crop}|"
                 f"{float(scale)!r}|{max_height}|{max_width}")  # fmt: skip
        return hashlib.sha1(ident.encode()).hexdigest()

    def entry(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.png"

    def load(
        self,
        path: str | Path,
        scale: float,
        max_height: int,
        max_width: int,
        crop: tuple[int, int, int, int] | None = None,
    ) -> np.ndarray:
        path = Path(path)
        if self.directory is None or not path.is_file():  # missing files: load_image says so
            return load_prepared(path, scale, max_height, max_width, crop)
        entry = self.entry(self.key(path, scale, max_height, max_width, crop))
        if entry.is_file():
            try:
                with Image.open(entry) as img:
                    image = np.asarray(img.convert("L"), dtype=np.uint8)
                self.hits += 1
                return image
            except (OSError, ValueError) as e:  # damaged entry (disk trouble): rebuild it
                log.warning("image cache: rebuilding unreadable entry %s (%s)", entry, e)
        image = load_prepared(path, scale, max_height, max_width, crop)
        self.misses += 1
        self._store(entry, image)
        return image

    def _store(self, entry: Path, image: np.ndarray) -> None:
        if self._write_failed:
            return
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-", suffix=".png")
            try:
                with os.fdopen(fd, "wb") as f:
                    Image.fromarray(image).save(f, format="PNG", compress_level=1)
                os.replace(tmp, entry)  # atomic: readers never see a partial file
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:  # read-only or full disk: keep training, uncached
            self._write_failed = True
            log.warning("image cache: cannot write to %s (%s); continuing without it",
                        self.directory, e)  # fmt: skip
