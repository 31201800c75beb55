"""How long HostCopies blocks for N GiB of GPU state, first save (allocate + page-lock) and later saves
(buffers reused); run on a GPU host: python benchmarks/results/async_checkpoint_h200_20261202/host_copy_speed.py 8"""

import sys
import time

import torch

from litespark.training.host_copy import HostCopies

gib = int(sys.argv[1]) if len(sys.argv) > 1 else 8
state = {f"t{i}": torch.ones(256 * 1024 * 1024, device="cuda") for i in range(gib)}  # 1 GiB each
torch.cuda.synchronize()
copies = HostCopies()
for attempt in range(3):
    t = time.perf_counter()
    copied = copies.copy("state.pt", state)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    assert all(bool(c[0] == 1.0) for c in copied.values())
    print(f"copy {attempt + 1}: {gib} GiB in {seconds:.2f} s ({gib / seconds:.1f} GiB/s), pinned: {copied['t0'].is_pinned()}")
