"""The grading network of Wei et al. 2022: SE-ResNet feature extractor + projection head + detached linear classifier.

The backbone is dynamic_network_architectures' ``ResidualEncoder`` (squeeze-excitation on, sizes from the plan's
``configurations.3d.grader.network``), followed by global average pooling to the feature ``h``. The projection head
(Linear -> projection_dim, L2-normalised) serves SupCon during training and is unused at inference. The
classification head (Linear -> num_classes) sees ``h.detach()`` in SupCon mode, so cross-entropy never reaches the
extractor (the paper's design); in CE mode (the paper's baseline) it sees ``h`` and CE trains the whole network.

Prior correction: the per-class sampler trains the classifier on balanced batches, so its softmax assumes every grade
is equally common. ``logit_adjustment`` (a buffer, saved with the weights) adds log(training frequency / uniform) to
the logits in eval mode - Bayes' rule for the real grade mix (logit adjustment, Menon et al. 2021); training mode
returns the raw logits that cross-entropy on balanced batches needs. Zero (no correction) unless the plan asks for it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.residual import BasicBlockD, BottleneckD
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from torch import nn

from vfscreen.errors import ConfigError

LOSS_NAMES = ("supcon", "ce")
DEFAULT_INPUT_CHANNELS = 3  # bone window, soft-tissue window, mask * label / 28
_BLOCKS = {"BasicBlockD": BasicBlockD, "BottleneckD": BottleneckD}
_NORMS = {"batch": nn.BatchNorm3d, "instance": nn.InstanceNorm3d}
_REQUIRED_KEYS = ("block", "features_per_stage", "n_blocks_per_stage", "strides", "kernel_sizes")


class GraderNet(nn.Module):
    """forward(x: (B, 3, D, H, W)) -> (features (B, F), logits (B, num_classes), projection (B, projection_dim)).

    ``projection`` has unit L2 norm; ``logits`` are computed from ``features.detach()`` when ``detach_classifier``
    and include ``logit_adjustment`` (num_classes,) in eval mode.
    """

    def __init__(self, encoder: ResidualEncoder, num_features: int, projection_dim: int, num_classes: int,
                 detach_classifier: bool):
        super().__init__()
        self.encoder = encoder
        self.projection_head = nn.Linear(num_features, projection_dim)
        self.classification_head = nn.Linear(num_features, num_classes)
        self.detach_classifier = bool(detach_classifier)
        self.num_features = num_features
        self.register_buffer("logit_adjustment", torch.zeros(num_classes))

    def set_class_prior(self, class_counts) -> None:
        """Eval-mode logits for a population with these grade counts (training set) instead of balanced batches."""
        counts = torch.as_tensor(class_counts, dtype=torch.float32)
        frequencies = counts / counts.sum()
        self.logit_adjustment.copy_(torch.log(frequencies * len(counts)).to(self.logit_adjustment.device))

    def forward(self, x: torch.Tensor):
        feature_maps = self.encoder(x)  # (B, F, d, h, w)
        features = feature_maps.mean(dim=(2, 3, 4))  # (B, F) global average pooling
        classifier_input = features.detach() if self.detach_classifier else features
        logits = self.classification_head(classifier_input)  # (B, num_classes)
        if not self.training:
            logits = logits + self.logit_adjustment
        projection = F.normalize(self.projection_head(features), dim=1)  # (B, projection_dim), unit norm
        return features, logits, projection


def _as_list(value, n_stages: int, key: str) -> list:
    if isinstance(value, (int, float)):
        return [value] * n_stages
    if not isinstance(value, (list, tuple)) or len(value) != n_stages:
        raise ConfigError(f"grader network plan: {key} must be a number or a list of {n_stages} entries, got {value!r}")
    return list(value)


def build_grader(network_plan: dict, loss_name: str = "supcon", input_channels: int = DEFAULT_INPUT_CHANNELS
                 ) -> GraderNet:
    """Build the GraderNet described by ``plans['configurations'][cfg]['grader']['network']``.

    ``loss_name`` 'supcon' detaches the classification head from the backbone, 'ce' does not. ``input_channels``:
    the crop's channels (CT windows + mask channel unless the crop plan's mask_channel is 'none').
    """
    if loss_name not in LOSS_NAMES:
        raise ConfigError(f"unknown grader loss {loss_name!r} (choose from {', '.join(LOSS_NAMES)})")
    missing = [key for key in _REQUIRED_KEYS if key not in network_plan]
    if missing:
        raise ConfigError(f"grader network plan lacks {missing}; re-run vfscreen_plan_and_preprocess")
    backbone = network_plan.get("backbone", "ResidualEncoder")
    if backbone != "ResidualEncoder":
        raise ConfigError(f"grader network plan: backbone {backbone!r} is not supported (only ResidualEncoder)")
    if network_plan["block"] not in _BLOCKS:
        raise ConfigError(f"grader network plan: block {network_plan['block']!r} is not one of {list(_BLOCKS)}")
    norm_name = network_plan.get("norm", "batch")
    if norm_name not in _NORMS:
        raise ConfigError(f"grader network plan: norm {norm_name!r} is not one of {list(_NORMS)}")
    features_per_stage = network_plan["features_per_stage"]
    if not isinstance(features_per_stage, (list, tuple)) or not features_per_stage:
        raise ConfigError(f"grader network plan: features_per_stage must be a non-empty list, got {features_per_stage!r}")
    n_stages = len(features_per_stage)
    block = _BLOCKS[network_plan["block"]]
    bottleneck_channels = network_plan.get("bottleneck_channels")
    if block is BottleneckD and bottleneck_channels is None:
        bottleneck_channels = [max(1, f // 4) for f in features_per_stage]  # ResNet-50's expansion of 4
    encoder = ResidualEncoder(
        input_channels=int(input_channels),
        n_stages=n_stages,
        features_per_stage=list(features_per_stage),
        conv_op=nn.Conv3d,
        kernel_sizes=_as_list(network_plan["kernel_sizes"], n_stages, "kernel_sizes"),
        strides=_as_list(network_plan["strides"], n_stages, "strides"),
        n_blocks_per_stage=_as_list(network_plan["n_blocks_per_stage"], n_stages, "n_blocks_per_stage"),
        conv_bias=False,
        norm_op=_NORMS[norm_name],
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU if network_plan.get("nonlin", "leaky_relu") == "leaky_relu" else nn.ReLU,
        nonlin_kwargs={"inplace": True},
        block=block,
        bottleneck_channels=bottleneck_channels,
        return_skips=False,
        squeeze_excitation=bool(network_plan.get("squeeze_excitation", True)),
    )
    return GraderNet(encoder, num_features=int(features_per_stage[-1]),
                     projection_dim=int(network_plan.get("projection_dim", 128)),
                     num_classes=int(network_plan.get("num_classes", 4)),
                     detach_classifier=(loss_name == "supcon"))
