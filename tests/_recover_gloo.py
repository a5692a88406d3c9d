"""One rank of the two-process recovery test (tests/test_recover.py): argv = rank, port, output file, and a
folder shared by the ranks for the teacher top-k cache ('' for a teacher forward pass).

Started twice by the test as plain processes; accelerate reads the torchrun-style variables set here and joins
the gloo group, so this is the path `accelerate launch` takes on CPUs."""

import os
import sys

rank, port, out, folder = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=rank, LOCAL_RANK=rank, WORLD_SIZE="2",
                  LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")  # fmt: skip
sys.path.insert(0, os.getcwd())

import torch  # noqa: E402

from tests.test_recover import distributed_case  # noqa: E402

torch.set_num_threads(1)
state = distributed_case(world=2, folder=folder)
if rank == "0":
    torch.save(state, out)
