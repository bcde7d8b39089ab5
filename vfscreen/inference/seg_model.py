"""Any trained nnU-Net v2 model folder as vfscreen's segmentation stage (``--seg_model``, ``--pretrained_seg``).

The folder is what nnU-Net writes and TotalSegmentator ships (e.g. ``~/.totalsegmentator/nnunet/results/
Dataset292_.../nnUNetTrainer...__nnUNetPlans__3d_fullres``): ``dataset.json``, ``plans.json``,
``fold_X/checkpoint_final.pth``. The network is built and run by vfscreen.inference.segmentation.NnunetSegmenter
(checkpoints with ``torch.load(weights_only=True)``; a checkpoint that needs more is refused), and its output labels
are named by its ``dataset.json``: vertebra names map to VerSe ids, sacrum / S1 / ribs become landmarks, every other
class is ignored (vfscreen.inference.spine_labels). The labels are the model's; vfscreen only checks them
(warnings). Nothing is downloaded: a missing folder or fold is an error that says where vfscreen looked.
"""
from __future__ import annotations

import SimpleITK as sitk

from vfscreen.core.model_folders import NNUNET_CHECKPOINTS
from vfscreen.inference.label_conventions import dataset_json_table, table_convention
from vfscreen.inference.segmentation import NnunetSegmenter
from vfscreen.inference.spine_labels import SpineLabels, check_given_labels, spine_labels_from_label_map
from vfscreen.segmentation_source import check_model_folder


class NamedModelSegmenter:
    """Callable: sitk.Image -> SpineLabels, from another nnU-Net model whose dataset.json names its classes."""

    def __init__(self, folder, folds=None, device="cpu", checkpoint: str = "final", use_mirroring: bool | None = None,
                 how: str = "--seg_model"):
        self.folder, self.folds = check_model_folder(folder, folds, checkpoint)
        self.convention = table_convention(f"dataset.json:{self.folder / 'dataset.json'}",
                                           dataset_json_table(self.folder / "dataset.json"))
        self.segmenter = NnunetSegmenter(self.folder, self.folds, device, checkpoint,
                                         use_mirroring=True if use_mirroring is None else use_mirroring)
        self.info = {"source": "seg_model", "how": how, "folder": str(self.folder), "folds": self.folds,
                     "trainer": self.segmenter.trainer_name, "checkpoint": NNUNET_CHECKPOINTS[checkpoint]}

    def __call__(self, image: sitk.Image) -> SpineLabels:
        class_map = self.segmenter(image, with_probabilities=False).full_class_map()
        spine = spine_labels_from_label_map(class_map, self.convention, str(self.folder),
                                            {"source": "seg_model", "model_folder": str(self.folder)})
        spine.warnings = check_given_labels(spine.verse_map, image)
        return spine
