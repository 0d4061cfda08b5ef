"""torch.distributed helpers for `torchrun`: one process per device, NCCL on CUDA, gloo on CPU.

Without torchrun's environment (WORLD_SIZE unset or 1) everything degrades to a single process,
so the same training and generation code runs on a laptop, one GPU or many nodes unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from realnet.errors import RealnetError


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


CUDA_BACKENDS = "cpu:gloo,cuda:nccl"


def init_distributed(backend: str | None = None) -> DistributedContext:
    """Join the process group described by torchrun's RANK / WORLD_SIZE / LOCAL_RANK variables.

    The backend defaults to NCCL for CUDA tensors (with gloo for CPU tensors, which NCCL does not
    take: the run's small scalar collectives stay on the CPU) when CUDA is available, and to gloo
    otherwise; each rank uses cuda:LOCAL_RANK or the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = launched_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RealnetError(f"torchrun started a rank with LOCAL_RANK {local_rank}, but this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s): give --nproc-per-node at most that "
                               "(or --device cpu)")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend or (CUDA_BACKENDS if use_cuda else "gloo"))
    return DistributedContext(rank, world_size, local_rank, device)


def init_for_device(name: str) -> DistributedContext:
    """`init_distributed` for a command's --device. Under torchrun, "cpu" puts every rank on the
    CPU with gloo (even where CUDA exists) and "auto" / "cuda" give each rank cuda:LOCAL_RANK; one
    named device (cuda:1, mps) cannot be every rank's and is refused."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and name not in ("auto", "cpu", "cuda"):
        raise RealnetError(f"--device {name}: under torchrun every rank takes cuda:LOCAL_RANK (--device auto or "
                           "cuda) or the CPU (--device cpu)")
    if name != "auto":
        from realnet.engine.runtime import resolve_device  # its one-line errors for unusable devices

        resolve_device(name)
    return init_distributed(backend="gloo" if name == "cpu" else None)


def broadcast_state(module: torch.nn.Module, context: DistributedContext) -> None:
    """Rank 0's parameters and buffers copied to every rank once before training, so that ranks
    which computed their initial state apart (weights, AFS indices) cannot start out different."""
    if not context.enabled:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def all_ranks_agree(value: int, context: DistributedContext) -> bool:
    """Whether every rank holds the same `value`; the same answer on every rank, so all of them can
    stop together instead of leaving the others waiting in a collective."""
    if not context.enabled:
        return True
    extremes = torch.tensor([value, -value], dtype=torch.int64)
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    return int(extremes[0]) == -int(extremes[1])


def average_scalars(values: dict[str, float], context: DistributedContext) -> dict[str, float]:
    """The mean over ranks of each value (e.g. each rank's loss on its shard of the batch)."""
    if not context.enabled or not values:
        return values
    stacked = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return dict(zip(values, (stacked / context.world_size).tolist()))


def _buckets(tensors: list[torch.Tensor], max_elements: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive groups of same-dtype tensors holding at most `max_elements` values (or one
    larger tensor)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        if bucket and (size + tensor.numel() > max_elements or tensor.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += tensor.numel()
    if bucket:
        yield bucket


class _GatherRows(torch.autograd.Function):
    """(n,) on each rank -> (world_size, n), row r from rank r, with gradients: rank r's input
    feeds row r of every rank's output, so its gradient is the sum over ranks of that row's.
    (torch.distributed.nn.functional does the same but is deprecated in favour of a private API.)"""

    @staticmethod
    def forward(ctx, values: torch.Tensor) -> torch.Tensor:
        rows = [torch.empty_like(values) for _ in range(dist.get_world_size())]
        dist.all_gather(rows, values.contiguous())
        return torch.stack(rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[dist.get_rank()]


class SyncBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole batch across all ranks, as the
    authors' `torch.nn.SyncBatchNorm.convert_sync_batchnorm` gives them. Torch's SyncBatchNorm
    refuses CPU tensors, so gloo runs could not use it; this one works with every backend.

    Each rank's count, mean and sum of squared deviations travel in one differentiable all_gather
    and are merged by the parallel-variance formula (Chan et al.), stable in float32 (float64 for
    float64 inputs); gradients flow back to every rank's shard. Outside training or outside a
    process group it is exactly BatchNorm2d. Same parameters and buffers, so checkpoints do not change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        values = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16/fp16 under autocast: stats in float32
        count = values.new_full((1,), values.numel() / values.shape[1])
        local_mean = values.sum(dim=(0, 2, 3)) / count.clamp(min=1)  # an empty shard adds nothing, not NaN
        local_m2 = ((values - local_mean[None, :, None, None]) ** 2).sum(dim=(0, 2, 3))
        gathered = _GatherRows.apply(torch.cat([count, local_mean, local_m2]))
        counts, means, m2s = gathered[:, :1], gathered[:, 1:1 + self.num_features], gathered[:, 1 + self.num_features:]
        total = counts.sum()
        mean = (counts * means).sum(dim=0) / total
        variance = (m2s + counts * (means - mean) ** 2).sum(dim=0) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                unbiased = variance * (total / (total - 1).clamp(min=1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        normalised = (values - mean[None, :, None, None]) * torch.rsqrt(variance + self.eps)[None, :, None, None]
        if self.affine:
            normalised = normalised * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return normalised.to(x.dtype)


def synchronize_batchnorm(module: torch.nn.Module, context: DistributedContext) -> torch.nn.Module:
    """Replaces every BatchNorm2d in `module` by a `SyncBatchNorm2d` that takes over its very
    parameters and buffers (device, dtype, requires_grad kept; a layer used in two places stays
    one layer). In place; returns `module`. Nothing changes for a single process."""
    if not context.enabled:
        return module
    replaced: dict[int, SyncBatchNorm2d] = {}

    def replace_in(parent: torch.nn.Module) -> None:
        for name, child in list(parent._modules.items()):  # named_children() skips a repeated layer
            if type(child) is torch.nn.BatchNorm2d:
                if id(child) not in replaced:
                    synced = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                             child.track_running_stats, device="meta")
                    for attribute in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                        setattr(synced, attribute, getattr(child, attribute))
                    synced.train(child.training)
                    replaced[id(child)] = synced
                setattr(parent, name, replaced[id(child)])
            elif child is not None:  # a registered but empty slot
                replace_in(child)

    replace_in(module)
    return module


def broadcast_buffers(module: torch.nn.Module, context: DistributedContext) -> None:
    """Rank 0's buffers (the BatchNorm running statistics, which each rank updates on its own
    shard) copied to every rank, as DDP does, so that all ranks hold one and the same model."""
    if not context.enabled:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def average_gradients(parameters: Iterable[torch.nn.Parameter], context: DistributedContext,
                      bucket_elements: int = 1 << 24) -> None:
    """All-reduce and average gradients across ranks, as DDP does, without wrapping modules
    (some forwards take lists of features). Gradients travel in flat buckets so a large model
    needs a few collective calls rather than one per tensor."""
    if not context.enabled:
        return
    for bucket in _buckets([p.grad for p in parameters if p.grad is not None], bucket_elements):
        flat = torch.cat([grad.reshape(-1) for grad in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(context.world_size)
        for grad, part in zip(bucket, flat.split([grad.numel() for grad in bucket])):
            grad.copy_(part.view_as(grad))


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def cleanup(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
