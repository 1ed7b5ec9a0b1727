"""Running under torchrun: one process per device, DistributedDataParallel, rank 0 writes.

torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT) starts one copy of the command per device. `distributed()` joins the copies
into a process group: NCCL when they train on CUDA (each on cuda:LOCAL_RANK), Gloo on CPU.
Started any other way, it is a world of one and every helper here does nothing.

Who does what: every rank trains on its share of each epoch (`EpochSampler`) and
evaluates its share of a split (score_split's `shard`); confusion matrices and loss sums are
summed over ranks, so the numbers are those of one process over all the data. Only rank
0 prints, draws progress bars and writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from segtool.errors import SegtoolError
from segtool.models.device import pick_device

T = TypeVar("T")


def env_rank() -> int:
    """This process's rank as the launcher set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def restart_count() -> int:
    """How many times torchrun's elastic agent restarted this group (--max-restarts)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


@dataclass(frozen=True)
class Dist:
    """This process's place in the group; a world of one when not launched by torchrun."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over ranks (a new tensor, on `tensor`'s device)."""
        if not self.active:
            return tensor
        total = tensor.to(self.device, copy=True)  # NCCL reduces CUDA tensors only
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(tensor.device)

    def max_ints(self, values: list[int]) -> list[int]:
        """Elementwise maximum over ranks: one rank's flag becomes everyone's decision."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def share_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP hands them out
        at each training forward, so after the last step every rank holds the statistics of
        its own last batch; evaluating with them would not be evaluating the saved model."""
        if self.active:
            for buffer in module.buffers():
                dist.broadcast(buffer.data, src=0)

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (anything picklable)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's `items`, concatenated in rank order, on every rank."""
        if not self.active:
            return items
        boxes: list[Any] = [None] * self.world
        dist.all_gather_object(boxes, items)
        return [x for box in boxes for x in box]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only (file-system checks, folder creation) and hand its result,
        or the SegtoolError it raised, to every rank, so all of them stop or go on together."""
        result: Any = None
        if self.main:
            try:
                result = ("ok", fn())
            except SegtoolError as e:
                result = ("error", e)
        kind, value = self.broadcast(result)
        if kind == "error":
            raise value
        return value


@contextmanager
def distributed(device_name: str, key: str = "train.device") -> Iterator[Dist]:
    """This process's place and device (`device_name` as pick_device reads it, `key` the
    setting it came from); joins, and on the way out leaves, the process group when
    launched by torchrun."""
    if not launched():
        yield Dist(device=pick_device(device_name, key))
        return
    rank, world, local = env_rank(), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    pick_device(device_name, key)  # the same checks and messages as a single process gets
    if device_name != "cpu" and torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise SegtoolError(
                f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} GPU(s); "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        device, backend = torch.device("cuda", local), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    owner = not dist.is_initialized()
    if owner:
        try:
            timeout = timedelta(minutes=30)
            store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
            # After an elastic restart the launcher's store still holds the previous
            # attempt's addresses; a prefix per attempt keeps the new group from reading them.
            store = dist.PrefixStore(f"segtool/attempt{restart_count()}", store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        except (ValueError, RuntimeError) as e:
            raise SegtoolError(
                f"cannot join the torchrun group as rank {rank} of {world} ({str(e).splitlines()[0]}); "
                "start segtool with torchrun, which sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT"
            ) from None
    try:
        yield Dist(rank, world, device)
    finally:
        if owner and dist.is_initialized():
            dist.destroy_process_group()
