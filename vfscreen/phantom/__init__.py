"""Synthetic Genant spine-CT phantom (Dataset501_SyntheticSpine): exact ground truth for segmentation and grading.

Modules: ``anatomy`` (patient, spine curve, vertebra geometry, field of view), ``vertebra`` (body surfaces and the
Genant heights they define, natural variation and fractures), ``rendering`` (HU volume + labels on a supersampled
world grid), ``acquisition`` (presets, spacing, orientation, blur, noise), ``generator`` (cases, dataset writing),
``preview`` (sagittal picture), ``cli`` (console entry point).

World coordinates are SimpleITK's LPS millimetres: +x = patient left, +y = posterior, +z = superior.
"""
