"""The Quadlet units against the compose file (issue 16).

This podman (4.3) has no Quadlet generator, so the units cannot be turned into services here.
What is checked instead: every key is one Quadlet knows (a typo would be silently ignored by
the generator), and the units describe the same deployment as deploy/compose.yaml, which CI
does run: the same images (the compose defaults), commands, health checks, volumes, exposed
ports, SHUTDOWN_TIMEOUT_S and stop timeout (SHUTDOWN_TIMEOUT_S + 5 s), and URLs that name the
containers the other units create. The compose file is read with the system's PyYAML (the
interpreter podman-compose runs on; the project itself does not depend on a YAML library).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.container.engine import ROOT

QUADLET = ROOT / "deploy" / "quadlet"
STOP_MARGIN_S = 5

# Quadlet's keys (podman 5.x documentation, podman-systemd.unit(5)) for the sections used here.
CONTAINER_KEYS = {
    "AddCapability", "AddDevice", "Annotation", "AutoUpdate", "ContainerName", "DNS",
    "DropCapability", "Entrypoint", "Environment", "EnvironmentFile", "EnvironmentHost", "Exec",
    "ExposeHostPort",
    "GroupAdd", "HealthCmd", "HealthInterval", "HealthOnFailure", "HealthRetries",
    "HealthStartPeriod", "HealthStartupCmd", "HealthTimeout", "HostName", "Image", "IP", "Label",
    "LogDriver", "Mount", "Network", "NoNewPrivileges", "Notify", "PodmanArgs", "PublishPort",
    "Pull", "ReadOnly", "ReadOnlyTmpfs", "RunInit", "Secret", "StopSignal", "StopTimeout",
    "Timezone", "Tmpfs", "User", "UserNS", "Volume", "WorkingDir",
}  # fmt: skip
NETWORK_KEYS = {"NetworkName", "Driver", "Subnet", "Gateway", "IPRange", "Internal", "Label"}


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in (QUADLET / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


def one(values: dict[str, list[str]], key: str) -> str:
    assert len(values.get(key, [])) == 1, f"{key}: {values.get(key)}"
    return values[key][0]


def environment(container: dict[str, list[str]]) -> dict[str, str]:
    words = [word for line in container["Environment"] for word in shlex.split(line)]
    return {key: value for key, _, value in (word.partition("=") for word in words)}


def default(image: str) -> str:
    """`${VAR:-default}` -> default (the public image the compose file falls back to)."""
    match = re.fullmatch(r"\$\{\w+:-(.+)\}", image)
    assert match, f"image {image!r} does not come from a variable with a default"
    return match[1]


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s?", duration)
    assert match, duration
    return int(match[1])


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    to_json = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
    with (ROOT / "deploy" / "compose.yaml").open() as source:
        loaded = subprocess.run(
            ["/usr/bin/python3", "-c", to_json],
            stdin=source,
            capture_output=True,
            text=True,
            check=False,
        )
    assert loaded.returncode == 0, (
        f"needs python3-yaml (apt-get install podman-compose): {loaded.stderr}"
    )
    services: dict[str, Any] = json.loads(loaded.stdout)["services"]
    return services


def test_every_key_is_one_quadlet_knows() -> None:
    files = sorted(QUADLET.iterdir())
    assert {f.suffix for f in files} == {".container", ".network"}
    for file in files:
        sections = unit(file.name)
        known = CONTAINER_KEYS if file.suffix == ".container" else NETWORK_KEYS
        section = "Container" if file.suffix == ".container" else "Network"
        unknown = set(sections[section]) - known
        assert not unknown, f"{file.name}: unknown Quadlet keys {unknown}"
        assert set(sections) <= {"Unit", section, "Service", "Install"}, file.name


def test_redis_and_database_units_match_the_compose_services(compose: dict[str, Any]) -> None:
    for unit_name, service in [
        ("processor-redis.container", compose["redis"]),
        ("processor-db.container", compose["timescaledb"]),
    ]:
        container = unit(unit_name)["Container"]
        assert one(container, "Image") == default(service["image"]), unit_name
        if "command" in service:
            assert one(container, "Exec") == " ".join(service["command"])
        kind, *check = service["healthcheck"]["test"]
        assert kind == "CMD"
        assert one(container, "HealthCmd") == " ".join(check), unit_name
        assert one(container, "HealthInterval") == service["healthcheck"]["interval"]
        targets = {v.split(":")[1] for v in container["Volume"]}
        assert targets == {v.split(":")[1] for v in service["volumes"]}, unit_name
        assert one(container, "Network") == "processor.network"
    db = environment(unit("processor-db.container")["Container"])
    env = compose["timescaledb"]["environment"]
    assert {k: db[k] for k in ("POSTGRES_DB", "POSTGRES_USER")} == {
        k: env[k] for k in ("POSTGRES_DB", "POSTGRES_USER")
    }


def processors(compose: dict[str, Any]) -> list[dict[str, Any]]:
    """The compose file's processor instances: one service each, `processor-N`."""
    names = sorted(name for name in compose if name.startswith("processor"))
    assert names == [f"processor-{n}" for n in range(1, len(names) + 1)], names
    return [compose[name] for name in names]


def test_compose_instances_have_stable_distinct_names_and_the_same_settings(
    compose: dict[str, Any],
) -> None:
    """Each instance's consumer name is fixed (not its container's host name, which changes
    on every recreate); apart from it the instances are identical."""
    instances = processors(compose)
    assert len(instances) >= 2
    ids = [service["environment"]["INSTANCE_ID"] for service in instances]
    assert ids == [f"processor-{n}" for n in range(1, len(ids) + 1)]
    assert "deploy" not in instances[0] and "hostname" not in instances[0]
    first = {k: v for k, v in instances[0].items() if k != "environment"}
    first_env = {k: v for k, v in instances[0]["environment"].items() if k != "INSTANCE_ID"}
    for service in instances[1:]:
        assert {k: v for k, v in service.items() if k != "environment"} == first
        assert {k: v for k, v in service["environment"].items() if k != "INSTANCE_ID"} == first_env


def test_a_bad_configuration_is_not_restarted_for_ever(compose: dict[str, Any]) -> None:
    """Exit 2 (invalid configuration) cannot be fixed by a restart: systemd does not restart
    it; compose, which cannot exclude an exit code, retries it a bounded number of times."""
    assert one(unit("processor@.container")["Service"], "RestartPreventExitStatus") == "2"
    for service in processors(compose):
        policy, _, retries = service["restart"].partition(":")
        assert policy == "on-failure" and 1 <= int(retries) <= 10, service["restart"]


def test_health_is_liveness_and_the_unit_waits_for_it() -> None:
    """The image's HEALTHCHECK probes /healthz (liveness, as OPERATIONS.md says), and the
    Quadlet unit is started only once it passes."""
    containerfile = (ROOT / "Containerfile").read_text()
    check = containerfile[containerfile.index("\nHEALTHCHECK") :].split("\n\n")[0]
    assert "/healthz" in check and "/readyz" not in check, check
    operations = (ROOT / "OPERATIONS.md").read_text()
    assert "Liveness = `GET /healthz`" in operations
    assert "`HEALTHCHECK` on `/healthz`" in operations
    assert one(unit("processor@.container")["Container"], "Notify") == "healthy"


def test_processor_unit_matches_the_compose_service(compose: dict[str, Any]) -> None:
    service = processors(compose)[0]
    sections = unit("processor@.container")
    container = sections["Container"]
    assert one(container, "Image") == default(service["image"])
    # Both rely on the image's HEALTHCHECK and STOPSIGNAL (one definition, in Containerfile).
    assert "healthcheck" not in service and "HealthCmd" not in container
    assert "HEALTHCHECK" in (ROOT / "Containerfile").read_text()
    assert "StopSignal" not in container and service["stop_signal"] == "SIGTERM"
    assert "STOPSIGNAL SIGTERM" in (ROOT / "Containerfile").read_text()
    assert sorted(container["ExposeHostPort"]) == sorted(service["expose"])
    assert "PublishPort" not in container and "ports" not in service

    env = environment(container)
    shutdown = float(env["SHUTDOWN_TIMEOUT_S"])
    assert shutdown == float(service["environment"]["SHUTDOWN_TIMEOUT_S"])
    stop_timeout = int(one(container, "StopTimeout"))
    assert stop_timeout == seconds(service["stop_grace_period"])
    assert stop_timeout >= shutdown + STOP_MARGIN_S
    assert seconds(one(sections["Service"], "TimeoutStopSec")) > stop_timeout  # systemd waits

    # The URLs name the containers the other units create (compose: the service names).
    redis_host = urlsplit(env["REDIS_URL"]).hostname
    assert redis_host == one(unit("processor-redis.container")["Container"], "ContainerName")
    assert urlsplit(service["environment"]["REDIS_URL"]).hostname == "redis"
    db_url_secret = one(container, "Secret")
    assert db_url_secret.startswith("processor-database-url,")
    assert one(unit("processor-db.container")["Container"], "ContainerName") == "processor-db"
    assert urlsplit(service["environment"]["DATABASE_URL"]).hostname == "timescaledb"
    assert env["INSTANCE_ID"] == "processor-%i"  # stable per instance, unique per template
