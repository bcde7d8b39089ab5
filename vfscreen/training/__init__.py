"""Training: the nnU-Net segmentation stage and the SupCon grader (vfscreen_train)."""
