"""Run a function on several gloo processes of this machine, as torchrun would start them, bounded in time.

Each process gets torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and one
thread; what the function returns on each rank comes back as a list, rank 0 first.
"""
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, List

import torch
import torch.multiprocessing as mp

from distill_ee import distributed

#: a deadlock between ranks fails the test after this many seconds instead of hanging CI
TIMEOUT = 240


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out: str, fn: Callable, args: tuple) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        torch.save(fn(*args), Path(out) / f"rank{rank}.pt")
    finally:
        distributed.leave()


def run_ranks(fn: Callable, *args: Any, world: int = 2, timeout: float = TIMEOUT) -> List[Any]:
    """``fn(*args)`` on ``world`` processes; their results, rank 0 first (a child's exception is re-raised)."""
    with tempfile.TemporaryDirectory() as out:
        ctx = mp.start_processes(_entry, args=(world, free_port(), out, fn, args), nprocs=world, join=False,
                                 start_method="spawn")
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                for process in ctx.processes:
                    process.kill()
                raise TimeoutError(f"{world} processes did not finish within {timeout} s (a collective deadlock?)")
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world)]
