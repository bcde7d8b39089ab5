"""Folder for nnunetv2's external-trainer look-up (``nnUNet_extTrainer``); see vfscreen.training.segmentation."""
