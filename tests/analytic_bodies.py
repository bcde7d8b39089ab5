"""Analytic vertebral bodies shared by the morphometry tests: a body frame tilted against the grid and height
functions h(a, l) of the antero-posterior (a) and lateral (l) position inside the body (mm)."""
import numpy as np

DEPTH, WIDTH = 30.0, 40.0  # body depth (antero-posterior) and width (lateral), mm
SPINE_AXIS = np.array([0.0, -0.34, -0.94]) / np.linalg.norm([0.0, -0.34, -0.94])  # head -> feet, tilted forward
ANTERIOR = np.array([0.0, -1.0, 0.0]) - (np.array([0.0, -1.0, 0.0]) @ SPINE_AXIS) * SPINE_AXIS
ANTERIOR /= np.linalg.norm(ANTERIOR)
LATERAL = np.cross(SPINE_AXIS, ANTERIOR)
CENTRE = np.array([10.0, -20.0, 300.0])
WALLS = {"anterior": DEPTH / 2, "middle": 0.0, "posterior": -DEPTH / 2}  # Genant: heights at the walls


def box_height(a, l):
    return np.full(np.shape(a), 25.0)


def wedge_height(a, l):  # anterior wall 15 mm, posterior wall 25 mm
    return 25.0 + (15.0 - 25.0) * (np.asarray(a) + DEPTH / 2) / DEPTH


def biconcave_height(a, l):  # both endplates dip 5 mm at the centre (parabolic bowls)
    return 26.0 - 2 * 5.0 * (1 - (np.asarray(a) ** 2 + np.asarray(l) ** 2) / 25.0 ** 2)
