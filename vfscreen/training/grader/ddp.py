"""Distributed data parallel for the grader: ``torchrun --nproc_per_node=N vfscreen_train ...`` (or the module).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them training runs in one process. Backend: NCCL on CUDA,
gloo otherwise. Each rank trains on its own share of every balanced batch (see the sampler), gradients are averaged
by DDP, validation is sharded and its predictions gathered on rank 0, and only rank 0 writes files.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group when launched by torchrun with more than one process; else a 1-process context."""
    if not launched_by_torchrun():
        return DistributedContext()
    context = DistributedContext(world_size=int(os.environ["WORLD_SIZE"]), rank=int(os.environ["RANK"]),
                                 local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(context.local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return context


def shutdown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(network: torch.nn.Module, context: DistributedContext, device: torch.device,
               find_unused_parameters: bool, sync_batchnorm: bool = False):
    """DDP wrapper (the network itself without DDP). ``sync_batchnorm``: batch statistics over all ranks' samples
    (the authors' 2-GPU setting; torch supports it on CUDA only), the BatchNorm layers converted in place."""
    if not context.enabled:
        return network
    from torch.nn.parallel import DistributedDataParallel

    if sync_batchnorm and device.type == "cuda":
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)

    device_ids = [device.index if device.index is not None else context.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def unwrap_model(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if hasattr(network, "module") else network


def mean_over_ranks(value: float, context: DistributedContext) -> float:
    if not context.enabled:
        return float(value)
    on_gpu = dist.get_backend() == "nccl"
    tensor = torch.tensor([float(value)], dtype=torch.float64, device="cuda" if on_gpu else "cpu")
    dist.all_reduce(tensor)
    return float(tensor.item()) / context.world_size


def gather_to_all(obj, context: DistributedContext) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not context.enabled:
        return [obj]
    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
