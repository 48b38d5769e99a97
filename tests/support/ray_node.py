"""A second Ray node joined to the session's local cluster, offering what a test says.

Ray places an actor by the resources it asks for and by node labels (`label_selector`). The
session's one-node cluster offers no custom resource and no label, and it is started once, so
a placement test joins a node that does: `ray start --address=<the session's GCS> --block`,
in a process group of its own, ended by its process group (never `ray stop`, which would end
every Ray of the machine). It gets a temporary directory of its own: `ray start` records the
cluster it joined there (`ray_current_cluster`), and in the default /tmp/ray that record would
send every later `ray.init()` on this machine to this session's cluster, long gone by then.

Where an actor runs, and whether it waits to be placed, is read from Ray's GCS actor table
(`ray._private.state`, a DeveloperAPI the pipeline's restart probe reads too): the state API
needs a dashboard, which the session's Ray does not run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import ray

from orchestrator.private_redis import free_port
from tests.support.process_group import end_process_group
from tests.support.waiting import wait_for

RAY = str(Path(sys.executable).parent / "ray")
MARK = "vlmq-test/node"  # a label of each joined node's own, to find it by


class JoinedNode:
    def __init__(
        self, resources: dict[str, float], labels: dict[str, str], num_gpus: float = 0,
    ) -> None:
        self.resources = resources
        self.mark = uuid.uuid4().hex[:12]
        self.labels = {**labels, MARK: self.mark}
        self.num_gpus = num_gpus
        # Short: Ray's socket paths under its temp dir must fit in 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="vlmq-node-", dir="/tmp"))
        self.log = self.temp_dir / "ray-node.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.node_id = ""

    def start(self, timeout_s: float = 120.0) -> JoinedNode:
        """Join the cluster this process is connected to; return once Ray lists the node."""
        labels = ",".join(f"{key}={value}" for key, value in self.labels.items())
        command = [
            RAY, "start", "--block", f"--address={ray.get_runtime_context().gcs_address}",
            # No CPUs: the session's image tasks and CPU actors stay on the head.
            "--num-cpus=0", f"--num-gpus={self.num_gpus:g}",
            f"--resources={json.dumps(self.resources)}", f"--labels={labels}",
            f"--temp-dir={self.temp_dir}", "--object-store-memory=100000000",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", "--disable-usage-stats",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
            )
        wait_for(lambda: self._listed() or self.process.poll() is not None,  # type: ignore[union-attr]
                 "the joined node is listed alive", timeout_s)
        assert self.process.poll() is None, self.log.read_text()
        return self

    def stop(self) -> None:
        """End the node's processes; return once Ray no longer lists it alive."""
        if self.process is not None:
            end_process_group(self.process)
            if self.node_id:
                wait_for(lambda: not self._is_alive(), "the joined node gone", 60)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _listed(self) -> bool:
        for node in _nodes():
            if node["Alive"] and node.get("Labels", {}).get(MARK) == self.mark:
                self.node_id = node["NodeID"]
                return True
        return False

    def _is_alive(self) -> bool:
        return any(node["Alive"] and node["NodeID"] == self.node_id for node in _nodes())


def _nodes() -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return nodes


def actor_table_entry(actor: Any) -> dict[str, Any]:
    info = ray._private.state.actors(actor._actor_id.hex())
    assert isinstance(info, dict), info
    return info


def node_of(actor: Any) -> str:
    """The ID of the node the actor runs on."""
    return str(actor_table_entry(actor)["Address"]["NodeID"])


def state_of(actor: Any) -> str:
    """ALIVE, PENDING_CREATION (waiting to be placed, or starting), RESTARTING or DEAD."""
    return str(actor_table_entry(actor)["State"])
