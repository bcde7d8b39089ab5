"""How a device budget becomes network sizes: a memory model and a speed model of both networks.

Memory model (training, one step, both nets)
    peak_bytes = batch x sum(stored activation elements per sample) x bytes_per_activation x ACTIVATION_OVERHEAD
               + n_parameters x 4 bytes x 3   (weights, gradients, SGD momentum)
and a plan fits when peak_bytes <= usable memory = 85% of the device - GPU_OVERHEAD_GB (CUDA context; 0 on CPU).
"Stored activation elements" are the tensors autograd keeps for the backward pass, counted layer by layer:
  * nnU-Net's PlainConvUNet (conv -> instance norm -> LeakyReLU in place): per conv 2 x C x V (conv output, norm
    output); per decoder stage the transposed-conv output C x V and the skip concatenation 2C x V; per deep-supervision
    output num_classes x V for the logits and 3 x num_classes x V for the loss (softmax, one-hot, product).
  * ResidualEncoder (stem = conv + norm at the input resolution; BasicBlockD = 2 x (conv, norm) + SE product +
    residual sum (+ projection conv/norm of the skip when the shape changes); BottleneckD = 3 x (conv, norm) with the
    bottleneck width + SE product + sum (+ skip projection)).
BYTES_PER_ACTIVATION is 4 (float32) on CPU and MPS, 2 on CUDA where both nnU-Net and the grader train with automatic
mixed precision (half-precision activations; this CUDA figure has not been measured in this project).
ACTIVATION_OVERHEAD (1.3) covers what the layer count leaves out (activation gradients alive during backward,
allocator slack). Checked against measurement on CPU: tests/test_budget.py asserts that the peak resident-memory increase of one
training step of the CPU plan lies within +-50% of the model.

Speed model (CPU plans)
    seconds_per_step = batch x (3 x forward_FLOPs / (GFLOPS_PER_THREAD x 1e9)
                                + stored_activation_elements / (GELEMENTS_PER_THREAD x 1e9)) / num_threads
(one forward + a backward of about twice the forward's cost, plus the memory traffic of writing and re-reading every
stored activation). forward_FLOPs counts 2 x k^3 x C_in x C_out per output voxel of every convolution. On a CPU the
narrow 3D nets vfscreen plans are bound by memory traffic, not arithmetic: the constants below come from a
least-squares fit to measured training steps (PlainConvUNet 32-64^3 with 8-16 base features, ResidualEncoder
32-48^3, 2 threads), rounded down (conservative). ``python -m vfscreen.experiment_planning.benchmark_budget`` measures
the real rates of a plan; a preset can override the constants (``budget.cpu_gflops_per_thread``,
``budget.cpu_gelements_per_thread``).

On a GPU the memory model binds (the plan must fit ``memory_gb``), on a CPU the speed model binds (the plan must train
at the target rate: >= 1 segmentation iteration/s, >= 4 grader samples/s with headroom for data loading). The speed
model chooses the networks; the number of epochs is then sized from a measured training step of the chosen networks
on the planning machine (.calibration, .schedule) unless planning is told not to measure (then from this model).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from vfscreen.errors import ConfigError

BYTES_PER_ACTIVATION = {"cpu": 4, "mps": 4, "cuda": 2}
ACTIVATION_OVERHEAD = 1.3
BYTES_PER_PARAMETER_TRAINING = 4 * 3  # weight, gradient, momentum (float32)
GPU_OVERHEAD_GB = 1.0  # CUDA context + allocator slack
GFLOPS_PER_THREAD = 100.0  # arithmetic throughput of 3D convs per CPU thread in training (see module docstring)
GELEMENTS_PER_THREAD = 0.12  # stored activation elements written + re-read per second per CPU thread
GB = 1024 ** 3


@dataclass(frozen=True)
class DeviceBudget:
    """The device training will run on. ``memory_gb``: GPU memory (cuda/mps) or RAM usable for training (cpu)."""

    type: str
    memory_gb: float
    num_threads: int

    @property
    def usable_memory_gb(self) -> float:
        """Memory the activations, weights and optimizer may use: 85% of the device, minus the CUDA context."""
        overhead = GPU_OVERHEAD_GB if self.type == "cuda" else 0.0
        return 0.85 * self.memory_gb - overhead

    @property
    def bytes_per_activation(self) -> int:
        return BYTES_PER_ACTIVATION[self.type]

    def as_plan_entry(self) -> dict:
        return {"type": self.type, "memory_gb": float(self.memory_gb), "num_threads": int(self.num_threads)}


@dataclass
class PlanningTargets:
    """Knobs of the planner that a preset's ``budget`` section may set (all have defaults)."""

    seg_seconds_per_iteration: float = 0.5     # CPU: compute share of one nnU-Net iteration (target >= 1 it/s)
    grader_samples_per_second: float = 8.0     # CPU: crops/s of the grader's compute (target >= 4 with data loading)
    seg_minutes: float = 20.0                  # training time the segmentation stage may take (sets its epochs)
    grader_minutes: float = 8.0                # training time the grader may take (sets its epochs)
    grader_steps: int = 0                      # > 0: SGD steps of the grader instead (epochs = steps / batches)
    seg_iterations_per_epoch: int = 50         # budget-fitted nnU-Net configuration (stock nnU-Net: 250)
    seg_val_iterations_per_epoch: int = 5      # (stock nnU-Net: 50)
    cpu_gflops_per_thread: float = GFLOPS_PER_THREAD
    cpu_gelements_per_thread: float = GELEMENTS_PER_THREAD
    max_seg_spacing_mm: float = 2.0            # coarsest segmentation spacing a CPU plan may choose
    min_grader_epochs: int = 20
    max_grader_epochs: int = 1000
    min_seg_epochs: int = 5
    max_seg_epochs: int = 1000

    @classmethod
    def from_preset(cls, budget_section: dict | None) -> "PlanningTargets":
        budget_section = dict(budget_section or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(budget_section) - known)
        if unknown:
            raise ConfigError(f"preset field 'budget' has unknown key(s) {unknown}; known: {sorted(known)}")
        for key, value in budget_section.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"preset field 'budget.{key}' must be a number > 0, got {value!r}")
        return cls(**budget_section)


# ------------------------------------------------------------------------------------------------ layer accounting
@dataclass
class NetworkCost:
    """Per-sample cost of one network at one input size."""

    activation_elements: float = 0.0  # stored for backward, per sample
    forward_flops: float = 0.0        # per sample
    parameters: float = 0.0

    def conv(self, c_in: int, c_out: int, kernel: int | tuple, out_voxels: float, stored_tensors: int = 2) -> None:
        """A convolution (+ its norm): ``stored_tensors`` maps of c_out x out_voxels are kept for backward."""
        k3 = math.prod(kernel) if isinstance(kernel, (tuple, list)) else kernel ** 3
        self.forward_flops += 2.0 * k3 * c_in * c_out * out_voxels
        self.parameters += k3 * c_in * c_out + 3 * c_out  # weights + bias + norm affine
        self.activation_elements += stored_tensors * c_out * out_voxels

    def stored(self, channels: int, voxels: float) -> None:
        self.activation_elements += channels * voxels

    def training_memory_gb(self, batch_size: int, bytes_per_activation: int = 4) -> float:
        """Peak training memory (GB) of one step with ``batch_size`` samples (see the module docstring)."""
        activation_bytes = batch_size * self.activation_elements * bytes_per_activation * ACTIVATION_OVERHEAD
        return (activation_bytes + self.parameters * BYTES_PER_PARAMETER_TRAINING) / GB

    def training_seconds(self, batch_size: int, num_threads: int, gflops_per_thread: float = GFLOPS_PER_THREAD,
                         gelements_per_thread: float = GELEMENTS_PER_THREAD) -> float:
        """CPU seconds of one training step (forward + backward + SGD) of ``batch_size`` samples."""
        per_sample = (3.0 * self.forward_flops / (gflops_per_thread * 1e9)
                      + self.activation_elements / (gelements_per_thread * 1e9))
        return batch_size * per_sample / max(1, num_threads)


def _shape_after(shape, stride) -> list[int]:
    strides = stride if isinstance(stride, (list, tuple)) else [stride] * len(shape)
    return [max(1, math.ceil(s / st)) for s, st in zip(shape, strides)]


def unet_cost(patch_size, features_per_stage, strides, kernel_sizes=3, n_conv_per_stage=2,
              n_conv_per_stage_decoder=2, num_classes=27, input_channels=1, deep_supervision=True) -> NetworkCost:
    """nnU-Net's PlainConvUNet (encoder, decoder, deep supervision heads, loss) for one sample."""
    n_stages = len(features_per_stage)
    kernels = list(kernel_sizes) if isinstance(kernel_sizes, (list, tuple)) else [kernel_sizes] * n_stages
    n_enc = n_conv_per_stage if isinstance(n_conv_per_stage, (list, tuple)) else [n_conv_per_stage] * n_stages
    n_dec = (n_conv_per_stage_decoder if isinstance(n_conv_per_stage_decoder, (list, tuple))
             else [n_conv_per_stage_decoder] * (n_stages - 1))
    cost = NetworkCost()
    shapes, shape, c_in = [], list(patch_size), input_channels
    for stage, features in enumerate(features_per_stage):
        shape = _shape_after(shape, strides[stage])
        voxels = math.prod(shape)
        for conv_index in range(n_enc[stage]):
            cost.conv(c_in if conv_index == 0 else features, features, kernels[stage], voxels)
        shapes.append(voxels)
        c_in = features
    for stage in range(n_stages - 2, -1, -1):  # decoder, deepest first
        features, voxels = features_per_stage[stage], shapes[stage]
        stride = strides[stage + 1]
        cost.conv(features_per_stage[stage + 1], features, stride, voxels, stored_tensors=1)  # transposed conv
        cost.stored(2 * features, voxels)  # skip concatenation
        for conv_index in range(n_dec[stage]):
            cost.conv(2 * features if conv_index == 0 else features, features, kernels[stage], voxels)
        if deep_supervision or stage == 0:
            cost.conv(features, num_classes, 1, voxels, stored_tensors=1)  # segmentation head
            cost.stored(3 * num_classes, voxels)  # softmax, one-hot target, Dice products
    return cost


def residual_encoder_cost(patch_size, features_per_stage, strides, n_blocks_per_stage, block="BasicBlockD",
                          kernel_sizes=3, bottleneck_channels=None, input_channels=3) -> NetworkCost:
    """dynamic_network_architectures' ResidualEncoder with squeeze-excitation (the grader backbone), one sample."""
    n_stages = len(features_per_stage)
    kernels = list(kernel_sizes) if isinstance(kernel_sizes, (list, tuple)) else [kernel_sizes] * n_stages
    if bottleneck_channels is None:
        bottleneck_channels = [max(1, f // 4) for f in features_per_stage]
    cost = NetworkCost()
    shape = list(patch_size)
    cost.conv(input_channels, features_per_stage[0], kernels[0], math.prod(shape))  # stem, input resolution
    c_in = features_per_stage[0]
    for stage, features in enumerate(features_per_stage):
        for block_index in range(n_blocks_per_stage[stage]):
            stride = strides[stage] if block_index == 0 else 1
            shape = _shape_after(shape, stride)
            voxels = math.prod(shape)
            if block == "BottleneckD":
                width = bottleneck_channels[stage]
                cost.conv(c_in, width, 1, voxels * (stride ** 3) if stride > 1 else voxels)
                cost.conv(width, width, kernels[stage], voxels)
                cost.conv(width, features, 1, voxels)
            else:
                cost.conv(c_in, features, kernels[stage], voxels)
                cost.conv(features, features, kernels[stage], voxels)
            cost.stored(2 * features, voxels)  # squeeze-excitation product, residual sum
            if stride != 1 or c_in != features:
                cost.conv(c_in, features, 1, voxels)  # skip projection (after average pooling)
            c_in = features
    return cost


def grader_cost(grader: dict) -> NetworkCost:
    """The cost of the network of a plan's ``grader`` section at its crop size, one sample."""
    network = grader["network"]
    return residual_encoder_cost(grader["crop"]["patch_size"], network["features_per_stage"], network["strides"],
                                 network["n_blocks_per_stage"], block=network["block"],
                                 bottleneck_channels=network.get("bottleneck_channels"))


def total_stride(strides) -> int:
    return math.prod(s if isinstance(s, int) else max(s) for s in strides)


def grader_views_per_batch(samples_per_class: int, views: int, num_classes: int = 4) -> int:
    """The per-class sampler draws samples_per_class crops of each grade, each crop is augmented ``views`` times."""
    return samples_per_class * num_classes * views
