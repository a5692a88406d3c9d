"""One rank of the two-process recovery test (tests/test_recover.py): argv = rank, port, output file.

Started twice by the test as plain processes; accelerate reads the torchrun-style variables set here and joins
the gloo group, so this is the path `accelerate launch` takes on CPUs."""

import os
import sys

rank, port, out = sys.argv[1], sys.argv[2], sys.argv[3]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=rank, LOCAL_RANK=rank, WORLD_SIZE="2",
                  LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")  # fmt: skip
sys.path.insert(0, os.getcwd())

import torch  # noqa: E402

from tests.test_recover import distributed_case  # noqa: E402

torch.set_num_threads(1)
state = distributed_case(world=2)
if rank == "0":
    torch.save(state, out)
