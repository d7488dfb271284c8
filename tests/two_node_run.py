"""Run ``launch.py train`` on a simulated two-node Ray cluster on this machine (a subprocess of
the two-node test: the test process already holds the session's local Ray).

Node A (the head) offers the custom resource ``node_a``, node B ``node_b``; the config pins the
learner to A and rollout + reward to B. Train stops after step 1, then ``--resume`` runs step 2.
Usage: python -m tests.two_node_run TEMP_DIR RUN_DIR key=value ...
"""
from __future__ import annotations

import json
import os
import sys


def main(temp_dir: str, run_dir: str, overrides: list[str]) -> int:
    import ray
    import ray._private.utils as ray_utils
    from ray.cluster_utils import Cluster

    import launch

    # Cluster() records its address in Ray's default temp dir, where any other `ray.init()` on
    # this machine would find and join it: keep it in our own temp dir instead.
    ray_utils.write_ray_address = lambda address, temp_dir_=None: None
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    common = {"temp_dir": temp_dir, "object_store_memory": 200 * 2**20, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={**common, "num_cpus": 2, "resources": {"node_a": 2}})
    try:
        cluster.add_node(**{k: v for k, v in common.items() if k != "include_dashboard"},
                         num_cpus=2, resources={"node_b": 2})
        cluster.wait_for_nodes()
        address = [f"ray.address={cluster.address}"]
        pin = ["ray.learner_resources={node_a: 1}", "ray.rollout_resources={node_b: 1}",
               "ray.reward_resources={node_b: 0.5}"]
        rc1 = launch.main(["train", *overrides, *pin, *address, f"run.dir={run_dir}", "--stop-after", "1"])
        rc2 = launch.main(["train", "--resume", run_dir, *address]) if rc1 == 0 else None
        ray.init(address=cluster.address)
        nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
        ray.shutdown()
        print(json.dumps({"rc": [rc1, rc2], "nodes": nodes}))
        return 0
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
