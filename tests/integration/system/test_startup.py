"""Start-up: HTTP answers from the first moment, `/readyz` turns 200 as the instance reports
ready, and nothing that readiness does not need (the racing domain, rich) is waited for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import trio

from tests.support.daemon import Daemon
from tests.support.scrape import get
from tests.support.service import running_service

UNREACHABLE_POSTGRES = "postgresql://postgres@127.0.0.1:1/nowhere"  # port 1: refused at once


async def test_http_answers_while_the_servers_are_not_reached_yet(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Liveness holds and readiness says why not while start-up still retries PostgreSQL."""
    startup = {"DATABASE_URL": UNREACHABLE_POSTGRES, "STARTUP_TIMEOUT_S": "60"}
    daemon = Daemon(env | startup, tmp_path / "processor.log")
    try:
        port = await daemon.http_port()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            assert (await client.get("/healthz")).status_code == 200
            with trio.fail_after(10):
                while True:  # the first probe round ends within its timeout
                    response = await client.get("/readyz")
                    assert response.status_code == 503
                    body = response.json()
                    assert "starting" in body["failing"], body
                    if "postgres" in body["failing"]:
                        break
                    await trio.sleep(0.05)
            assert body["checks"]["postgres"]["ok"] is False
            assert body["checks"]["redis"] == {"ok": True}
        assert not daemon.events("ready")
        assert daemon.alive(), daemon.tail()
    finally:
        daemon.kill()


async def test_readyz_is_200_as_soon_as_the_service_reports_ready(env: dict[str, str]) -> None:
    """The first probe verdict and lag sample exist by then, and the racing domain's engine
    (started right after ready) is in place once `run` reports started."""
    async with running_service(env) as service:
        assert service.ready.is_set()
        response = await get(service.http_port, "/readyz")
        assert response.status_code == 200, response.text
        assert service.domain is not None


def test_processor_run_leaves_rich_out() -> None:
    """rich is a development-only package (the lint tools bring it) that structlog imports
    when it can: `processor run` must start as it would in production."""
    code = (
        "import sys\n"
        "from processor import cli\n"
        "cli.cmd_run = lambda args, config: print(sorted(name for name, module in"
        " sys.modules.items() if name.split('.')[0] == 'rich' and module is not None))\n"
        "cli.main(['run'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, timeout=60, text=True
    )
    assert out.stdout.strip() == "[]", out
