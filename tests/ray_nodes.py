"""A multi-node Ray cluster on this machine, in a process of its own, for the multi-node tests.

``python -m tests.ray_nodes SPEC_JSON`` starts a ``ray.cluster_utils.Cluster``: a head node and
one worker node per name in the spec, each with its own CPUs, GPUs (fake ones: Ray only counts
them) and a custom resource named after the node, so that placement can be observed. It prints
one JSON line ``{"address": ..., "nodes": {name: node_id}}`` and then obeys commands on stdin,
one per line, answering each with one JSON line:

- ``remove NAME``: kill the node's processes at once, with no graceful drain (a spot instance
  taken back); the answer comes when they are gone;
- ``add NAME``: start a node of the worker shape named NAME (an autoscaler's replacement);
- ``quit``, or the end of stdin (the test process died): shut the cluster down and exit.

The caller sets ``RAY_TMPDIR`` to a folder of its own: the cluster's sockets, logs and its
``ray_current_cluster`` address file stay apart from every other Ray on the machine (a plain
``ray.init()`` elsewhere would otherwise connect to this cluster while it runs).

Spec: {"head": {Cluster.add_node kwargs}, "worker": {kwargs of every worker node},
"workers": [names], "system_config": {Ray system config of the head}}.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main(spec: dict[str, Any]) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        **spec.get("head", {}), "_system_config": spec.get("system_config", {})})
    nodes = {}

    def add(name: str) -> str:
        worker = spec.get("worker", {})
        node = cluster.add_node(**worker, resources={**worker.get("resources", {}), name: 1.0})
        nodes[name] = node
        return node.node_id

    ids = {name: add(name) for name in spec.get("workers", [])}
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address, "nodes": ids}), flush=True)
    try:
        for line in sys.stdin:
            command, _, name = line.strip().partition(" ")
            if command == "remove":
                cluster.remove_node(nodes.pop(name), allow_graceful=False)
                print(json.dumps({"removed": name}), flush=True)
            elif command == "add":
                print(json.dumps({"added": name, "node_id": add(name)}), flush=True)
            elif command == "quit":
                break
            else:
                print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
