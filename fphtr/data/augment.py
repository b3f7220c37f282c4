"""Training-time image augmentation, built with albumentations from conf/augmentation.

Every geometric transform grows the canvas to fit its output (`fit_output=True`) and fills
with paper white, so a rotated or sheared line keeps its text scale and never gets dark
corners. The result goes through the same geometry frame as every other image.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from fphtr.data.geometry import PAPER_WHITE


class Augmenter:
    """uint8 (H, W) -> uint8 (H', W'); deterministic for a given `seed` per call."""

    def __init__(
        self,
        scale_jitter: tuple[float, float] = (1.0, 1.0),
        rotate_limit: float = 0.0,
        rotate_p: float = 0.0,
        shear_limit: float = 0.0,
        shear_p: float = 0.0,
        perspective_scale: float = 0.0,
        perspective_p: float = 0.0,
        elastic_p: float = 0.0,
        morphology_p: float = 0.0,
        brightness_contrast: float = 0.0,
        brightness_contrast_p: float = 0.0,
        blur_p: float = 0.0,
        noise_std: float = 0.0,
        noise_p: float = 0.0,
        **_: object,  # other keys of the augmentation config (name, synthetic_proba)
    ):
        white = {"fill": PAPER_WHITE, "border_mode": cv2.BORDER_CONSTANT, "fit_output": True}
        t: list[A.BasicTransform] = []
        if tuple(scale_jitter) != (1.0, 1.0):
            t.append(A.Affine(scale=tuple(scale_jitter), keep_ratio=True, p=1.0, **white))
        if rotate_p > 0:
            t.append(A.Affine(rotate=(-rotate_limit, rotate_limit), p=rotate_p, **white))
        if shear_p > 0:
            t.append(A.Affine(shear={"x": (-shear_limit, shear_limit), "y": 0}, p=shear_p, **white))
        if perspective_p > 0:
            t.append(A.Perspective(scale=(0.0, perspective_scale), p=perspective_p, **white))
        if elastic_p > 0:
            t.append(A.ElasticTransform(alpha=1.0, sigma=8.0, fill=PAPER_WHITE, p=elastic_p))
        if morphology_p > 0:  # thicker or thinner strokes
            t.append(
                A.OneOf(
                    [A.Morphological((2, 2), "erosion"), A.Morphological((2, 2), "dilation")],
                    p=morphology_p,
                )
            )
        if brightness_contrast_p > 0:
            t.append(
                A.RandomBrightnessContrast(
                    brightness_contrast, brightness_contrast, p=brightness_contrast_p
                )
            )
        if blur_p > 0:
            t.append(A.GaussianBlur(sigma_limit=(0.3, 1.0), p=blur_p))
        if noise_p > 0:
            t.append(A.GaussNoise(std_range=(0.0, noise_std), p=noise_p))
        self.pipeline = A.Compose(t) if t else None

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        if self.pipeline is None:
            return image
        self.pipeline.set_random_seed(seed)
        return self.pipeline(image=image)["image"]
