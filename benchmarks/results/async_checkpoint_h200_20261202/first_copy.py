"""Why the first copy into freshly page-locked buffers is slow, and whether touching them first helps:
python benchmarks/results/async_checkpoint_h200_20261202/first_copy.py 12"""

import sys
import time

import torch

from litespark.training.host_copy import HostCopies

gib = int(sys.argv[1]) if len(sys.argv) > 1 else 12
state = {f"t{i}": torch.ones(256 * 1024 * 1024, device="cuda") for i in range(gib)}
torch.cuda.synchronize()


def timed(label, fn):
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    print(f"{label}: {time.perf_counter() - t:.2f} s", flush=True)


for touch in (False, True):
    copies = HostCopies()
    sizes = copies.storage_sizes(state)
    timed(f"[touch={touch}] reserve {gib} GiB (allocate + cudaHostRegister)", lambda: copies.reserve("s", sizes))
    if touch:
        scratch = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")

        def touch_all():
            for buf in copies._buffers.values():
                for off in range(0, buf.numel(), scratch.numel()):
                    n = min(scratch.numel(), buf.numel() - off)
                    scratch[:n].copy_(buf[off : off + n], non_blocking=True)

        timed(f"[touch={touch}] host-to-device read of every buffer", touch_all)
    for k in range(2):
        timed(f"[touch={touch}] copy {k + 1}", lambda: (copies.copy("s", state), torch.cuda.synchronize()))
    copies.release()
