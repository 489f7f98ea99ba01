"""The local Ray that ``qad run`` and ``qad serve`` start listens on loopback only (GCS, raylet, workers,
dashboard and runtime-env agents) and is their own even where another cluster is on the machine; a cluster
address leaves Ray alone."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from qad_assets.config import RAY_LOOPBACK, Settings, keep_local_ray_on_loopback

#: In a fresh process, as ``qad`` does: the switch, then Ray through the pipeline's resource; prints the
#: addresses every process of the new Ray listens on (from /proc, no tool needed).
PROBE = textwrap.dedent(
    """
    import json, os, pathlib, time
    from qad_assets.config import keep_local_ray_on_loopback
    keep_local_ray_on_loopback()
    import ray
    from resources.ray import RayResource

    resource = RayResource(num_cpus=1)
    resource.setup_for_execution(None)
    ray.get(ray.remote(lambda: 1).remote())  # a worker too
    time.sleep(2)

    children = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    inodes = set()
    for pid in tree:
        try:
            for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN, one of ours
                listening.append(fields[1])
    print(json.dumps(listening))
    resource.teardown_after_execution(None)
    """
)


def address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp's ``hex:port`` local address (32-bit words in host byte order) as an address."""
    host = hex_address.split(":")[0]
    raw = b"".join(bytes.fromhex(host[i : i + 8])[::-1] for i in range(0, len(host), 8))
    ip = ipaddress.ip_address(raw)
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


@pytest.mark.slow  # starts a Ray (about 20 s on 2 busy cores)
def test_a_local_ray_listens_on_loopback_only() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", RAY_LOOPBACK)}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    listening = [address(a) for a in json.loads(done.stdout.strip().splitlines()[-1])]
    assert len(listening) >= 5  # GCS, raylet (2), agents, a worker
    assert all(ip.is_loopback for ip in listening), listening


def test_the_switch_is_set_only_without_a_cluster_address() -> None:
    local: dict[str, str] = {}
    keep_local_ray_on_loopback(local)
    assert local == {RAY_LOOPBACK: "0"}
    cluster = {"RAY_ADDRESS": "ray://head:10001"}
    keep_local_ray_on_loopback(cluster)
    assert RAY_LOOPBACK not in cluster
    assert Settings().environment()[RAY_LOOPBACK] == "0"  # qad ui's dagster dev and its runs
    assert RAY_LOOPBACK not in Settings(ray_address="ray://head:10001").environment()


@pytest.mark.slow  # starts a Ray
def test_the_service_starts_a_ray_of_its_own_where_another_cluster_is_named() -> None:
    """Ray's ``ray_current_cluster`` file names the last ``ray start`` on the machine (here a dead one):
    ``qad serve`` without an address must start its own Ray, not join (or wait forever for) that one."""
    temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        (temp / "ray").mkdir()
        (temp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": str(temp)}
        code = "import ray; from qad_assets.service.app import init_ray; init_ray(None, num_cpus=1); "
        code += "print(ray.get_runtime_context().gcs_address)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().splitlines()[-1] != "127.0.0.1:9"
    finally:
        shutil.rmtree(temp, ignore_errors=True)
