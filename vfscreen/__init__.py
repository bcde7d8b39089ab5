"""vfscreen: screen CT scans for vertebral fractures (segment, label, grade on the Genant scale, measure heights)."""
from vfscreen import paths  # noqa: F401  (must run before nnunetv2 is imported anywhere)

__version__ = "0.1.0"


def predict(*args, **kwargs):
    """Screen CT scans; see :func:`vfscreen.inference.predict.predict` (returns a pandas DataFrame)."""
    from vfscreen.inference.predict import predict as _predict

    return _predict(*args, **kwargs)
