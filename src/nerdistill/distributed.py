"""The processes of a distributed run (`torchrun`, `accelerate launch`): who this process is, a
process group for a stage's duration, and each process's share of the work gathered in order on
the main process, which alone writes outputs.

Training gets all of this from Trainer; a stage that only runs a model forward (annotate) uses this.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import distributed as dist

Item = TypeVar("Item")


@dataclass(frozen=True)
class Ranks:
    """This process's `rank` among `world` processes, and its GPU number on its machine."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        """As torchrun and accelerate launch set them; one process when they are unset."""
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        """This process's own GPU when there are GPUs, else the CPU."""
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def share(self, items: Iterable[Item]) -> Iterator[Item]:
        """Items rank, rank + world, rank + 2 world, ...: this process's share of `items`."""
        return itertools.islice(items, self.rank, None, self.world)


@contextlib.contextmanager
def process_group(ranks: Ranks) -> Iterator[None]:
    """A gloo group over the processes while the block runs; nothing for one process. Gloo, also on
    GPUs: what the processes exchange are Python objects on the CPU."""
    if ranks.world == 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", rank=ranks.rank, world_size=ranks.world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def gathered_in_order(own: Iterable[Item], total: int, ranks: Ranks) -> Iterator[Item]:
    """On the main process, the `total` items of all processes in order, item i made by process
    i % world (`own` yields this process's, as `Ranks.share` picks them); nothing on the others.

    Every process must drain this iterator: each round of `world` items is one collective call.
    """
    if ranks.world == 1:
        yield from own
        return
    mine = iter(own)
    for first in range(0, total, ranks.world):
        gathered = [None] * ranks.world if ranks.is_main else None
        dist.gather_object(next(mine, None), gathered, dst=0)
        if ranks.is_main:
            yield from gathered[:total - first]
