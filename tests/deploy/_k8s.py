"""Render kustomizations with the pinned renderer and read what they make (the deploy tests' shared part).

Rendering uses tests/deploy/kustomize/bin/kustomize (sigs.k8s.io/kustomize/api pinned by its go.mod;
built by tests/containers/image-setup.sh), never whatever kubectl a machine has, so CI and a laptop
render alike.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy._nodes import ROOT

BASE = ROOT / "deploy" / "k8s"
RENDERER_DIR = ROOT / "tests" / "deploy" / "kustomize"
RENDERER = RENDERER_DIR / "bin" / "kustomize"
SETUP = "run bash tests/deploy/kustomize/setup.sh (scripts/test.sh does, through tests/containers/image-setup.sh)"
RENDER_TIMEOUT = 60.0
#: Kubernetes expands $(VAR) in args from the container's env; $$ escapes it.
ENV_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def renderer() -> Path:
    """The built renderer, refusing one built from other sources (the marker setup.sh writes)."""
    marker = RENDERER_DIR / "bin" / ".built"
    if not RENDERER.exists() or not marker.exists():
        pytest.fail(f"{RENDERER} is missing: {SETUP}", pytrace=False)
    # The hash tests/interop/go/setup.sh records: go.mod, go.sum, main.go, setup.sh.
    want = hashlib.sha256(
        b"".join((RENDERER_DIR / f).read_bytes() for f in ("go.mod", "go.sum", "main.go", "setup.sh"))
    ).hexdigest()
    if marker.read_text().strip() != want:
        pytest.fail(f"{RENDERER} was built from other sources: {SETUP}", pytrace=False)
    return RENDERER


def render(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(renderer()), "-json", str(directory)], capture_output=True, text=True, timeout=RENDER_TIMEOUT
    )
    assert result.returncode == 0, f"kustomize {directory} failed:\n{result.stderr}"
    objects: list[dict[str, Any]] = json.loads(result.stdout)
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for o in objects:
        if o["kind"] in ("StatefulSet", "Deployment", "DaemonSet"):
            yield o


def container_env(container: dict[str, Any], objects: list[dict[str, Any]], pod_name: str) -> dict[str, str]:
    """The environment the container starts with (literal values, envFrom ConfigMaps, the pod name)."""
    configmaps = by_kind(objects, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        assert ref in configmaps, f"envFrom names a ConfigMap {ref} that the base does not make"
        env.update(configmaps[ref]["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            field = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert field == "metadata.name", f"unexpected env source {var}"
            env[var["name"]] = pod_name
    return env
