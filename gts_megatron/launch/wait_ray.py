"""``python -m gts_megatron.launch.wait_ray ADDRESS NODES TIMEOUT_S``: wait until a Ray cluster
has NODES live nodes (the Slurm Ray template runs it between starting Ray and the probes).
Exit 0 once they are there, 1 with a one-line message if they are not within the timeout."""
from __future__ import annotations

import os
import socket
import sys
import time


def wait_for_nodes(address: str, nodes: int, timeout_s: float) -> int:
    """Connect to the Ray head at ``address`` and wait for ``nodes`` live nodes; the exit code."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:  # the head's GCS port opens some seconds after `ray start`
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                print(f"[gts] error: no Ray head answered at {address} within {timeout_s:.0f} s; see "
                      f"ray-head.log in the job's log folder", file=sys.stderr)
                return 1
            time.sleep(1)
    import ray

    if host.startswith("127."):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(address=address, log_to_driver=False, logging_level="error")
    try:
        alive = 0
        while time.monotonic() < deadline:
            alive = sum(node["Alive"] for node in ray.nodes())
            if alive >= nodes:
                print(f"[gts] Ray cluster at {address}: {alive} node(s), {ray.cluster_resources().get('CPU', 0):.0f} "
                      f"CPU(s)", flush=True)
                return 0
            time.sleep(1)
        print(f"[gts] error: {alive} of {nodes} Ray nodes joined {address} within {timeout_s:.0f} s; see "
              f"ray-worker-*.log in the job's log folder", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(wait_for_nodes(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
