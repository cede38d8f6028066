"""The container tests: the image built from this tree, run by podman on this machine.

Not part of the default suite (`norecursedirs` in pyproject): they need root, podman and the
local base image (`sudo ../shared/podman/setup.sh`), and a build; CI runs them after the suite
(`just container-test`, from `.ci/run`). They use the same servers and the same isolation as
the suite: the machine's Redis and PostgreSQL, a schema and a stream key per test.
"""

from __future__ import annotations

import uuid

import pytest

from tests.container.engine import IMAGE, ROOT, build, free_port


@pytest.fixture(scope="session")
def image() -> str:
    """The processor image, built from this tree on the local base (layer cache reused)."""
    took = build(IMAGE, ROOT)
    print(f"built {IMAGE} in {took:.1f}s")
    return IMAGE


@pytest.fixture
def container_name() -> str:
    return f"processor-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def container_env(env: dict[str, str]) -> dict[str, str]:
    """The suite's processor environment, made for a container on the host's network: real
    ports (the HEALTHCHECK reads HTTP_PORT) and JSON logs at info (the lifecycle events)."""
    return env | {
        "HTTP_PORT": str(free_port()),
        "LIVE_WS_PORT": str(free_port()),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        "STARTUP_TIMEOUT_S": "60",
    }
