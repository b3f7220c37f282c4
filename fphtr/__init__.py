"""fphtr: an experiment framework for full-page handwriting recognition."""

import os

# albumentations checks the network for updates at import; never do that from a training job.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
