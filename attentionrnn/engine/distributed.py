"""``torch.distributed`` for the experiments: one process, or one per rank under ``torchrun``.

On the CPU the backend is gloo. Every rank trains on its shard of each batch (DDP averages the
gradients); evaluation is sharded the same way and the per-sample rows are gathered, so every rank
ends with the same metrics. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch.distributed as dist
from torch import nn

__all__ = ["DistContext", "init_distributed"]

T = TypeVar("T")


@dataclass
class DistContext:
    """This process's place in the job: rank, world size, and whether it made the group."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: np.ndarray, *, even: bool = False) -> np.ndarray:
        """This rank's part of ``indices``: every ``world``-th one from ``rank`` on (all of them
        in one process). The one way the experiments split data over ranks.

        ``even=True`` (a training epoch) first pads ``indices`` cyclically with its head so that
        every rank gets as many (DDP's steps must match), as ``DistributedSampler`` does;
        evaluation shards stay uneven and are gathered (:meth:`gather_rows`).
        """
        indices = np.asarray(indices)
        if even and len(indices) % self.world:
            pad = self.world - len(indices) % self.world
            indices = np.concatenate([indices, np.resize(indices, pad)])
        return indices[self.rank :: self.world]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def main_first(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on rank 0, then on the others (so that only rank 0 fills a
        cache the others then read)."""
        if self.main:
            result = fn(*args, **kwargs)
        self.barrier()
        if not self.main:
            result = fn(*args, **kwargs)
        return result

    def gather_rows(self, local: np.ndarray) -> np.ndarray:
        """The rows of every rank, concatenated (the local rows when running alone)."""
        if self.world == 1:
            return local
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, local)
        return np.concatenate(gathered)

    def gather_batches(
        self, indices: np.ndarray, batch_size: int, rows_of: Callable[[np.ndarray], np.ndarray],
        width: int,
    ) -> np.ndarray:  # fmt: skip
        """Sharded evaluation: ``rows_of(idx)`` (one row per sample, its index in the first
        column) of each batch of ``batch_size`` of this rank's shard of ``indices``, gathered from
        every rank and sorted by sample index (``width`` columns where this rank has none)."""
        shard = self.shard(indices)
        rows = [rows_of(shard[i : i + batch_size]) for i in range(0, len(shard), batch_size)]
        table = self.gather_rows(np.concatenate(rows) if rows else np.zeros((0, width)))
        return table[np.argsort(table[:, 0], kind="stable")]

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (batch-norm statistics) so all evaluate one model."""
        if self.world > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def init_distributed() -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), owns)
