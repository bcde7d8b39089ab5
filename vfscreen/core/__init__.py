"""The shared layer every stage may import (and that imports no stage): plans and their typed accessors, model-folder
names, devices, the model-file formats (grader network and checkpoints, nnU-Net checkpoints, the fusion model).

The dependency rule (enforced by tests/test_layering.py): core <- experiment_planning <- preprocessing <- training;
inference reads model files through this layer and never imports training or evaluation; evaluation reads inference
outputs; the orchestrators (demo, benchmark) may use everything.
"""
