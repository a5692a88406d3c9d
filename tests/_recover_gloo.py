"""Run recovery in 2 CPU processes (gloo) and save rank 0's final weights: argv = repo tests dir, out file."""
import os
import sys

import torch
import torch.multiprocessing as mp


def work(rank: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    sys.path.insert(0, os.getcwd())
    from tests.test_recover import distributed_case
    sd = distributed_case(world=2)
    if rank == 0:
        torch.save(sd, out)


if __name__ == "__main__":
    mp.spawn(work, args=(sys.argv[1], int(sys.argv[2])), nprocs=2, join=True)
