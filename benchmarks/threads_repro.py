"""A tiny reproduction of the thread collapse: one embedding training step, timed.

    python benchmarks/threads_repro.py              # torch's default thread count
    python benchmarks/threads_repro.py 1            # one thread
    # two at once, each with the default, then with the OpenMP wait policy made passive:
    python benchmarks/threads_repro.py & python benchmarks/threads_repro.py; wait
    OMP_WAIT_POLICY=PASSIVE python benchmarks/threads_repro.py & \
        OMP_WAIT_POLICY=PASSIVE python benchmarks/threads_repro.py; wait

Two tables (943 and 1,682 rows, 64 factors), a batch of ``B`` (env, default 1024) dot products,
a squared loss, backward and fused Adam, ``STEPS`` (env, default 1500) times. Prints one JSON
line per process: the thread count, milliseconds per step and the import time. No recsys-mtl code:
only torch, so the effect is torch's OpenMP team on small kernels, not this package.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

t0 = time.perf_counter()
import torch  # noqa: E402
from torch import nn  # noqa: E402


def main() -> None:
    if len(sys.argv) > 1:
        torch.set_num_threads(int(sys.argv[1]))
    torch.manual_seed(0)
    n_users, n_items, dim = 943, 1682, 64
    batch = int(os.environ.get("B", 1024))
    steps = int(os.environ.get("STEPS", 1500))
    users, items = nn.Embedding(n_users, dim), nn.Embedding(n_items, dim)
    params = [*users.parameters(), *items.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    u = torch.randint(0, n_users, (batch,))
    i = torch.randint(0, n_items, (batch,))
    y = torch.rand(batch) * 4 + 1
    t1 = time.perf_counter()
    for _ in range(steps):
        loss = ((users(u) * items(i)).sum(1) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    t2 = time.perf_counter()
    row = {
        "labels": {"threads": torch.get_num_threads(), "batch": batch, "steps": steps,
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")},
        "metrics": {"ms_per_step": round(1000 * (t2 - t1) / steps, 3),
                    "import_seconds": round(t1 - t0, 2)},
    }  # fmt: skip
    machine = {"cpus": os.cpu_count(), "platform": platform.platform()}
    print(json.dumps({"benchmark": "threads_repro", "machine": machine, "rows": [row]}), flush=True)


if __name__ == "__main__":
    main()
