"""SegSweep core: data, models, losses, metrics, training and the results store."""
import os as _os

# albumentations otherwise asks PyPI for a newer version whenever it is imported (a network call)
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
