"""vfscreen: screen CT scans for vertebral fractures (segment, label, grade on the Genant scale, measure heights)."""
__version__ = "0.1.0"


def predict(*args, **kwargs):
    """Screen CT scans; see :func:`vfscreen.inference.predict.predict` (returns a pandas DataFrame). Imported on call,
    so that ``import vfscreen`` stays light (no torch, no nnunetv2)."""
    from vfscreen.inference.predict import predict as _predict

    return _predict(*args, **kwargs)
