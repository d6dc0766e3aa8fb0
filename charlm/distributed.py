"""torchrun / DistributedDataParallel plumbing: setup, teardown, and rank-0 helpers.

A run is distributed when torchrun's environment variables say so (WORLD_SIZE > 1). Every rank
then trains its own slice of the streams; gradients are averaged by DDP; only rank 0 writes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def restart_count() -> int:
    """How many times torchrun has restarted this worker group (0 on the first launch)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def world_size_from_env() -> int:
    """The number of processes this launch trains with (1 unless torchrun started it)."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def setup(device: torch.device) -> DistContext:
    """Join the process group torchrun prepared (nccl on CUDA, gloo on CPU); no-op otherwise."""
    if not launched_by_torchrun():
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ["WORLD_SIZE"])
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        if restart_count() > 0:
            dist.init_process_group(backend=backend, store=_restart_store(rank, world),
                                    rank=rank, world_size=world)
        else:
            dist.init_process_group(backend=backend)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world)


def _restart_store(rank: int, world: int):
    """The rendezvous store for a restarted worker group, under a prefix of its own.

    After a restart (``--max-restarts``) torchrun hands the new workers the same agent store as
    the first ones, and the process group's keys (each rank's address) are still there from the
    dead group: the new ranks would try to connect to ports nobody listens on any more ("Gloo
    connectFullMesh failed ... Connection refused", pytorch/pytorch#167288). A prefix per restart
    gives each generation a clean namespace.
    """
    use_agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=(not use_agent_store and rank == 0), multi_tenant=True)
    return dist.PrefixStore(f"charlm/restart_{restart_count()}", store)


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        # Leave together: a rank that tears gloo down while its peer is still finishing a
        # collective makes the peer's gloo threads abort the process ("terminate called
        # without an active exception").
        try:
            dist.barrier()
        except Exception:  # a peer that died already: nothing left to wait for
            pass
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, ctx: DistContext, src: int = 0):
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def on_main(ctx: DistContext, fn: Callable[[], Any]) -> Any:
    """fn() on rank 0 (None elsewhere); its error, if any, raised on every rank, so all of them
    stop together (a rank left going on alone would wait forever in its next collective)."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as e:  # passed to every rank so all of them stop with the same message
            error = e
    error = broadcast_object(error, ctx)
    if error is not None:
        raise error
    return result


def all_gather_object(obj, ctx: DistContext) -> list:
    """Every rank's obj, in rank order (a one-element list when not distributed)."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the exact bytes of every parameter and buffer, in state_dict order.

    DDP keeps replicas identical by construction; the digest lets a checkpoint prove it (each
    rank's digest is stored next to the weights rank 0 wrote).
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def all_reduce_max(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor
