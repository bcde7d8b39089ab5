"""Re-export for nnunetv2's trainer look-up by name (imported as a top-level module from this folder)."""
from vfscreen.training.segmentation import vfscreenSegTrainer  # noqa: F401
