"""Converters of real datasets into vfscreen's raw format (nnU-Net raw + grades.csv + centroids/).

- :mod:`vfscreen.conversion.verse`: VerSe 2019/2020 with a Genant grade sheet -> Dataset502_VerSe
- :mod:`vfscreen.conversion.faint_features`: the Faint-Features dataset (original CTs + annotation.yaml) ->
  Dataset503_FaintFeatures, or its processed patches -> grader crops (Dataset504_FaintFeaturesPatches)
- :mod:`vfscreen.conversion.common`: what they share (writing a case, problems, summary, atomic output, nnU-Net check)
"""
