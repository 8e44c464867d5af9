"""deploy/k8s renders, and what it renders runs: every container's arguments parsed by the binary's own
parser, against the Secrets' real contents; ports, probes and scrape annotations agree with the ports
the binaries will use; everything referenced exists; the bootstrap address names the monitor's
identity. The same checks run on an overlay made by deploy/k8s/new-network.sh.

Rendered with the pinned renderer (tests/deploy/_k8s.py), never whatever kubectl a machine has.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from physarum.overlay.addr import tcp_endpoint
from physarum.overlay.identity import load_key_pair
from tests.deploy._k8s import BASE, ENV_REF, by_kind, container_env, render, workloads
from tests.deploy._nodes import ParsedNode, image_user, parse_node


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An overlay made as an operator makes one (new keys, new identity), outside the checkout."""
    out = tmp_path_factory.mktemp("k8s") / "my-network"
    venv_bin = Path(sys.executable).parent
    result = subprocess.run(
        ["bash", str(BASE / "new-network.sh"), str(out)],
        env={**os.environ, "PHYSARUM": str(venv_bin / "physarum"), "PYTHON": str(venv_bin / "python")},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"new-network.sh failed:\n{result.stderr}"
    assert (out / "swarm.key").stat().st_mode & 0o077 == 0, "new-network.sh left swarm.key readable by others"
    assert (out / "identity.key").stat().st_mode & 0o077 == 0, "new-network.sh left identity.key readable by others"
    return out


@pytest.fixture(scope="module", params=["base", "new-network overlay"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    if request.param == "base":
        return render(BASE)
    return render(request.getfixturevalue("overlay"))


def materialise(
    container: dict[str, Any], pod: dict[str, Any], objects: list[dict[str, Any]], root: Path
) -> dict[str, Path]:
    """Write what each of the container's volumes holds (Secret data, empty dirs) under ``root``;
    mount path -> where it was written."""
    secrets = by_kind(objects, "Secret")
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        assert volume is not None, f"volumeMount {mount['name']} names no volume of the pod"
        where = root / mount["mountPath"].lstrip("/")
        where.mkdir(parents=True)
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            assert name in secrets, f"volume {mount['name']} names a Secret {name} that the base does not make"
            for key, value in secrets[name].get("data", {}).items():
                (where / key).write_bytes(base64.b64decode(value))
        else:
            assert "emptyDir" in volume, f"volume {mount['name']}: only Secrets and emptyDirs are expected"
        mounts[mount["mountPath"]] = where
    return mounts


def run_args(container: dict[str, Any], env: dict[str, str], mounts: dict[str, Path]) -> list[str]:
    """The container's args as the binary will see them, with mounted paths moved under the test's root."""

    def expand(arg: str) -> str:
        arg = ENV_REF.sub(lambda m: env[m.group(1)], arg)
        for mount_path, where in mounts.items():
            if arg == mount_path or arg.startswith(mount_path.rstrip("/") + "/"):
                return str(where) + arg[len(mount_path.rstrip("/")):]
        return arg

    assert "command" not in container, "the image's entrypoint (physarum) must run: give args, not command"
    return [expand(a) for a in container["args"]]


def parsed_containers(objects: list[dict[str, Any]], tmp_path: Path) -> list[tuple[dict[str, Any], dict[str, Any], ParsedNode]]:
    """(workload, container, parsed command line) for every container of every workload."""
    out = []
    for i, w in enumerate(workloads(objects)):
        pod = w["spec"]["template"]
        pod_name = f"{w['metadata']['name']}-0"
        for container in pod["spec"]["containers"]:
            env = container_env(container, objects, pod_name)
            mounts = materialise(container, pod, objects, tmp_path / f"{i}-{container['name']}")
            out.append((w, container, parse_node(run_args(container, env, mounts), env)))
    return out


def named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert numbers, f"container {container['name']} has no port named {port!r}"
    return int(numbers[0])


def test_every_container_runs_real_flags_on_the_ports_it_declares(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    parsed = parsed_containers(rendered, tmp_path)
    assert {node.command for _, _, node in parsed} == {"ping-monitor", "peer"}
    for w, container, node in parsed:
        where = f"{w['kind']}/{w['metadata']['name']} container {container['name']}"
        declared = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert node.p2p_ports == (declared["p2p"],), f"{where}: listens on {node.p2p_ports}, declares {declared}"
        assert node.metrics_port == declared["metrics"], f"{where}: metrics on {node.metrics_port}, declares {declared}"
        assert node.opts.psk is not None, f"{where}: runs without the private-network key"
        for probe in ("readinessProbe", "livenessProbe"):
            http = container[probe]["httpGet"]
            assert http["path"] == "/healthz", f"{where}: {probe} on {http['path']}"
            assert named_port(container, http["port"]) == node.metrics_port, f"{where}: {probe} not on metrics"
        annotations = w["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", where
        assert annotations["prometheus.io/port"] == str(node.metrics_port), where
        assert annotations["prometheus.io/path"] == "/metrics", where


def test_one_network_key_and_the_bootstrap_is_the_monitor(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    parsed = parsed_containers(rendered, tmp_path)
    keys = {node.opts.psk for _, _, node in parsed}
    assert len(keys) == 1, "the monitor and the peers must share one private-network key"
    monitors = [(w, node) for w, _, node in parsed if node.command == "ping-monitor"]
    peers = [node for _, _, node in parsed if node.command == "peer"]
    assert len(monitors) == 1
    statefulset, monitor = monitors[0]
    assert statefulset["kind"] == "StatefulSet", "the monitor needs a stable name (monitor-0.SERVICE)"
    assert statefulset["spec"]["replicas"] == 1, "one identity in the Secret: one monitor replica"
    service = by_kind(rendered, "Service")[statefulset["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None", "the monitor's Service must be headless (per-pod DNS names)"
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items(), "the Service selects no monitor pod"
    assert {p["port"] for p in service["spec"]["ports"]} == {*monitor.p2p_ports, monitor.metrics_port}
    want_host = f"{statefulset['metadata']['name']}-0.{service['metadata']['name']}"
    for node in peers:
        assert node.opts.bootstrap, "peers get no bootstrap address"
        for addr in node.opts.bootstrap:
            host, port, peer_id, _ = tcp_endpoint(addr)
            assert (host, port) == (want_host, monitor.p2p_ports[0]), f"peers bootstrap from {addr}"
            assert peer_id == monitor.opts.key_pair.peer_id, (
                f"the bootstrap address names {peer_id}, but the monitor's identity key is "
                f"{monitor.opts.key_pair.peer_id}"
            )


def test_secrets_configmaps_and_image_are_consistent(rendered: list[dict[str, Any]]) -> None:
    secrets = by_kind(rendered, "Secret")
    uid, gid = image_user()
    images = set()
    for w in workloads(rendered):
        spec = w["spec"]["template"]["spec"]
        for v in spec.get("volumes", []):
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets, f"{v} names a Secret the base does not make"
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True
        assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid), "not the image's USER"
        for c in spec["containers"]:
            images.add(c["image"])
            limits, requests = c["resources"]["limits"], c["resources"]["requests"]
            assert set(limits) == set(requests) == {"cpu", "memory"}, f"{c['name']}: requests and limits"
            for what in ("cpu", "memory"):
                assert quantity(requests[what]) <= quantity(limits[what]), f"{c['name']}: {what} request > limit"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert len(images) == 1, f"every container runs the one physarum image, got {images}"


def test_overlay_replaces_the_public_example_keys(overlay: Path) -> None:
    base = by_kind(render(BASE), "Secret")
    mine = by_kind(render(overlay), "Secret")
    assert len(base) == len(mine) == 2
    base_data = {json.dumps(s["data"], sort_keys=True) for s in base.values()}
    for name, secret in mine.items():
        assert json.dumps(secret["data"], sort_keys=True) not in base_data, f"{name} still holds the example key"
    # The files the overlay's generator read are the ones it wrote.
    identity = next(s for s in mine.values() if "identity.key" in s["data"])
    assert base64.b64decode(identity["data"]["identity.key"]) == (overlay / "identity.key").read_bytes()
    assert str(load_key_pair(overlay / "identity.key").peer_id) in json.dumps(render(overlay))


def quantity(text: str | int) -> float:
    """A Kubernetes quantity (cpu "500m", memory "128Mi") as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert match is not None and match.group(2) in {"", *units}, f"bad quantity {text!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)
