"""The one record type every dataset yields."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Sample:
    """One image with its transcription.

    image: uint8 array (H, W), paper white = 255, ink dark, already at the data format's
           resolution (datasets apply `geometry.prepare`).
    text:  the transcription; form lines are joined by "\\n".
    id:    a stable identifier (IAM id, or "synthetic-<split>-<epoch>-<index>").
    unreadable: the image could not be decoded (`image` is empty); evaluation datasets
           yield such a sample instead of replacing it, and the batch leaves it out.
    """

    image: np.ndarray
    text: str
    id: str
    unreadable: bool = False
