"""The container image (deploy/container/Dockerfile), built and run with podman as the Kubernetes base
runs it.

Builds the image from a wheelhouse (physarum's wheel, made here from the checkout without network,
and the dependencies' wheels tests/containers/image-setup.sh downloaded) on the base image that script
made with debootstrap; then, on a podman bridge network of its own, runs a ping-monitor and 5 peers
with exactly the arguments, environment, Secrets and non-root user that deploy/k8s renders to (the
peers dial the monitor by its Kubernetes name, monitor-0.monitor, mapped with --add-host; root
filesystems read-only, the state directory a tmpfs, as the manifests' emptyDir), and finds every
peer reachable in the monitor's metrics through a port published on 127.0.0.1; no node may log a
warning or an error. Everything it creates (containers, network, image) is removed whatever happens;
leftovers of a killed run are removed by the next.

Skips only where podman cannot be had (tests/containers/setup.sh left its reason) or the base image
cannot be made (image-setup.sh left its reason); a missing base image or wheelhouse fails: run
``bash tests/containers/image-setup.sh``.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests._process import pid_alive
from tests.containers.podman import CONF, podman_or_skip
from tests.deploy._k8s import BASE, ENV_REF, by_kind, container_env, render, workloads
from tests.deploy._nodes import DOCKERFILE, ROOT, image_user

#: Made by tests/containers/image-setup.sh (debootstrap --variant=minbase bookworm + python3-venv).
BASE_IMAGE = "localhost/physarum-base:bookworm"
IMAGE_UNAVAILABLE = CONF.parent / "image-unavailable"
WHEELS = CONF.parent / "wheels"
SETUP = "run bash tests/containers/image-setup.sh"
#: Names of what a run creates start with this and the run's pid; the label marks its containers.
PREFIX = "physarum-deploy-"
LABEL = "io.physarum.deploy-test"
IMAGE_REPO = "localhost/physarum-deploy"
PEERS = 5
BUILD_TIMEOUT = 180.0
PODMAN_TIMEOUT = 60.0
START_TIMEOUT = 30.0
JOIN_TIMEOUT = 30.0
POLL_INTERVAL = 0.2
#: Where a wheel's files are read from to build physarum's wheel outside the checkout.
PROJECT_FILES = ("pyproject.toml", "README.md", "src")



@dataclass
class Podman:
    """The podman command with the tests' configuration, and what this run created (for teardown)."""

    exe: str
    run_id: str
    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def run(self, *args: str, timeout: float = PODMAN_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.exe, *args], capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "CONTAINERS_CONF": str(CONF)},
        )

    def __call__(self, *args: str, timeout: float = PODMAN_TIMEOUT, check: bool = True) -> str:
        """``podman ARGS``; its stdout. Fails the test with podman's stderr when it fails and ``check``."""
        result = self.run(*args, timeout=timeout)
        if check and result.returncode != 0:
            pytest.fail(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr}", pytrace=False)
        return result.stdout

    def logs(self, container: str, tail: int = 20) -> str:
        """What the container wrote on stdout and stderr (its last ``tail`` lines of each)."""
        result = self.run("logs", "--tail", str(tail), container)
        return result.stdout + result.stderr

    def teardown(self) -> list[str]:
        """Remove what this run created; the errors, if any."""
        errors = []
        for args in (
            ["rm", "--force", "--time", "2", *self.containers] if self.containers else None,
            ["network", "rm", "--force", *self.networks] if self.networks else None,
            ["rmi", "--force", *self.images] if self.images else None,
        ):
            if args is not None and (result := self.run(*args)).returncode != 0:
                errors.append(f"podman {' '.join(args)}: {result.stderr.strip()}")
        return errors

    def remove_dead_runs(self) -> None:
        """Containers, networks and images of runs whose process is gone (a killed pytest)."""

        def dead(name: str) -> bool:
            pid = name.removeprefix(PREFIX).split("-")[0]
            return name.startswith(PREFIX) and pid.isdigit() and not pid_alive(int(pid))

        owners = self("ps", "--all", "--filter", f"label={LABEL}", "--format", f'{{{{.ID}}}} {{{{index .Labels "{LABEL}"}}}}')
        stale = [line.split()[0] for line in owners.splitlines() if len(line.split()) == 2 and dead(line.split()[1])]
        if stale:
            self("rm", "--force", "--time", "0", *stale, check=False)
        networks = [n for n in self("network", "ls", "--format", "{{.Name}}").split() if dead(n)]
        if networks:
            self("network", "rm", "--force", *networks, check=False)
        tags = self("images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={IMAGE_REPO}")
        images = [t for t in tags.split() if dead(PREFIX + t.rsplit(":", 1)[1])]
        if images:
            self("rmi", "--force", *images, check=False)


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    exe = podman_or_skip()
    if IMAGE_UNAVAILABLE.exists():
        reason = f"the base image cannot be made here: {IMAGE_UNAVAILABLE.read_text().strip()}"
        print(reason)
        pytest.skip(reason)
    engine = Podman(exe, f"{PREFIX}{os.getpid()}")
    if engine.run("image", "exists", BASE_IMAGE).returncode != 0:
        pytest.fail(f"the base image {BASE_IMAGE} is missing: {SETUP}", pytrace=False)
    if not list(WHEELS.glob("*.whl")) or not list((WHEELS / "build").glob("*.whl")):
        pytest.fail(f"the wheelhouse {WHEELS} is missing: {SETUP}", pytrace=False)
    engine.remove_dead_runs()
    try:
        yield engine
    finally:
        errors = engine.teardown()
        assert not errors, "could not remove what the test created:\n" + "\n".join(errors)


@pytest.fixture(scope="module")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Build the image: physarum's wheel from the checkout (offline, build tools from the wheelhouse)
    and the dependencies' wheels in a build context of its own."""
    tmp = tmp_path_factory.mktemp("image")
    project, context = tmp / "project", tmp / "context"
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            project.mkdir(exist_ok=True)
            shutil.copy2(source, project / name)
    wheels = context / "wheels"
    wheels.mkdir(parents=True)
    result = subprocess.run(
        ["nice", sys.executable, "-m", "pip",
         "wheel", "--quiet", "--disable-pip-version-check", "--no-deps", "--no-index",
         "--find-links", str(WHEELS / "build"), "--wheel-dir", str(wheels), str(project)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("PIP_")},
    )
    assert result.returncode == 0, f"pip wheel of the checkout failed:\n{result.stderr}"
    for wheel in WHEELS.glob("*.whl"):
        shutil.copy2(wheel, wheels)
    shutil.copy2(DOCKERFILE, context / "Dockerfile")
    tag = f"{IMAGE_REPO}:{os.getpid()}"
    podman.images.append(tag)
    podman("build", "--quiet", "--layers=false", "--build-arg", f"BASE={BASE_IMAGE}", "--tag", tag, str(context),
           timeout=BUILD_TIMEOUT)
    return tag


def peer_id_of(podman: Podman, container: str) -> str:
    """The peer id a node printed (its multiaddrs end in /p2p/ID), polled under a deadline."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        logs = podman("logs", container)
        found = re.search(r"/p2p/(\w+)$", logs, re.MULTILINE)
        if found:
            return found.group(1)
        state = podman("inspect", "--format", "{{.State.Status}}", container).strip()
        if state != "running" or time.monotonic() > deadline:
            pytest.fail(f"{container} ({state}) printed no multiaddr within {START_TIMEOUT:g} s:\n"
                        f"{podman.logs(container)}", pytrace=False)
        time.sleep(POLL_INTERVAL)


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def reachable_peers(metrics: str) -> set[str]:
    return {
        s.labels["peer"]
        for family in text_string_to_metric_families(metrics)
        if family.name == "physarum_peer_reachable"
        for s in family.samples
        if s.value == 1
    }


def run_like_k8s(
    podman: Podman, image: str, name: str, workload: dict[str, Any], objects: list[dict[str, Any]],
    secrets_dir: Path, extra: list[str],
) -> None:
    """``podman run`` the workload's container as its pod spec says: same args and env, its Secrets
    mounted read-only where the manifest mounts them, emptyDirs as tmpfs, the pod's uid, a read-only
    root filesystem."""
    pod = workload["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = container_env(container, objects, pod_name=name.removeprefix(f"{podman.run_id}-"))
    security = pod["spec"]["securityContext"]
    uid, gid = security["runAsUser"], security["runAsGroup"]
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    secrets = by_kind(objects, "Secret")
    mounts: list[str] = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" in volume:
            for key, value in secrets[volume["secret"]["secretName"]]["data"].items():
                path = secrets_dir / name / mount["name"] / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(base64.b64decode(value))
                # As the kubelet does: the pod's group may read it (defaultMode 0440), nobody else.
                os.chown(path, 0, security["fsGroup"])
                path.chmod(volume["secret"]["defaultMode"])
                mounts += ["--volume", f"{path}:{mount['mountPath']}/{key}:ro"]
        else:
            # An emptyDir: a fresh, empty directory the pod's user may write (fsGroup); U=true chowns
            # the tmpfs to the container's user (podman keeps the image directory's mode, 0700).
            mounts += ["--mount", f"type=tmpfs,destination={mount['mountPath']},notmpcopyup,U=true"]
    env_args = [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
    args = [ENV_REF.sub(lambda m: env[m.group(1)], a) for a in container["args"]]
    podman.containers.append(name)
    podman("run", "--detach", "--name", name, "--label", f"{LABEL}={podman.run_id}", "--network", podman.networks[0],
           "--user", f"{uid}:{gid}", "--group-add", str(security["fsGroup"]), "--read-only", *mounts, *env_args,
           *extra, image, *args)


def test_image_runs_the_k8s_monitor_and_5_peers(podman: Podman, image: str, tmp_path: Path) -> None:
    started = time.monotonic()
    uid, gid = image_user()
    config = podman("image", "inspect", "--format", "{{.Config.User}} {{json .Config.Entrypoint}}", image).split()
    assert config == [f"{uid}:{gid}", '["physarum"]'], f"image user and entrypoint: {config}"
    compilers = podman("run", "--rm", "--entrypoint", "/bin/sh", image, "-c",
                       "for c in cc gcc c++ g++ clang; do command -v $c; done; true")
    assert compilers.strip() == "", f"the image has a compiler: {compilers}"

    objects = render(BASE)
    statefulset = next(w for w in workloads(objects) if w["kind"] == "StatefulSet")
    deployment = next(w for w in workloads(objects) if w["kind"] == "Deployment")
    (monitor_container,) = statefulset["spec"]["template"]["spec"]["containers"]
    metrics_port = next(p["containerPort"] for p in monitor_container["ports"] if p["name"] == "metrics")

    network = f"{podman.run_id}-net"
    podman.networks.append(network)
    podman("network", "create", network)
    # The StatefulSet's first pod; its name is what the ConfigMap's bootstrap address dials.
    monitor = f"{podman.run_id}-{statefulset['metadata']['name']}-0"
    run_like_k8s(podman, image, monitor, statefulset, objects, tmp_path,
                 ["--publish", f"127.0.0.1::{metrics_port}"])
    monitor_id = peer_id_of(podman, monitor)
    status_line = podman("exec", monitor, "grep", "^Uid:", "/proc/1/status").split()
    assert status_line[1:] == [str(uid)] * 4, f"the monitor does not run as uid {uid}: {status_line}"
    published = podman("port", monitor, f"{metrics_port}/tcp").strip()
    host, _, port = published.rpartition(":")
    assert host == "127.0.0.1", f"the metrics port was published on {published}"
    base_url = f"http://127.0.0.1:{port}"
    monitor_ip = podman("inspect", "--format", f"{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}",
                        monitor).strip()
    service = statefulset["spec"]["serviceName"]

    peers = [f"{podman.run_id}-{deployment['metadata']['name']}-{i}" for i in range(PEERS)]
    for name in peers:
        run_like_k8s(podman, image, name, deployment, objects, tmp_path,
                     ["--add-host", f"{statefulset['metadata']['name']}-0.{service}:{monitor_ip}"])
    peer_ids = {peer_id_of(podman, name): name for name in peers}
    assert len(peer_ids) == PEERS
    assert monitor_id not in peer_ids

    deadline = time.monotonic() + JOIN_TIMEOUT
    while True:
        health = fetch(f"{base_url}/healthz")
        status, metrics = fetch(f"{base_url}/metrics")
        missing = set(peer_ids) - reachable_peers(metrics) if status == 200 else set(peer_ids)
        if health[0] == 200 and health[1].strip() == "ok" and not missing:
            break
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{podman.logs(n, tail=5)}" for n in (monitor, *peers))
            pytest.fail(f"after {JOIN_TIMEOUT:g} s: /healthz {health}, /metrics {status}; not reachable in the "
                        f"monitor's metrics: {[peer_ids[p] for p in missing]}\n{logs}", pytrace=False)
        time.sleep(POLL_INTERVAL)
    for name in (monitor, *peers):
        complaints = [line for line in podman.logs(name, tail=200).splitlines() if re.search(r" (WARNING|ERROR) ", line)]
        assert not complaints, f"{name} runs with the manifests' settings but complains:\n" + "\n".join(complaints)
    print(f"image built and 1+{PEERS} containers joined in {time.monotonic() - started:.1f} s after the build")
