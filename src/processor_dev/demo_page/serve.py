"""Start the race-control page and the Directus stand-in inside the demo's nursery.

Two HTTP servers on 127.0.0.1 (never 0.0.0.0: the stand-in trusts anyone with a session, so it
must not be reachable from other machines): the stand-in (`DIRECTUS_URL` of the demo's live
server) on a free port, and the page on `--page-port`. The demo then runs its processor with
`DIRECTUS_URL` pointing at the stand-in and `LIVE_WS_ALLOWED_ORIGINS` naming exactly the page's
origins, so the browser's cookie session passes the live server's Origin check and nothing
else does.

`DEMO_PAGE_LIVE_PORT` (development only) makes the page connect to another port than the live
server's own, e.g. a proxy in front of it (the browser test kills such a proxy to see the page
reconnect).
"""

from __future__ import annotations

import os

import attrs
import trio

from processor.observability.http import HttpServer
from processor_dev.demo_page import DEFAULT_PORT
from processor_dev.demo_page.pages import ResultsReader, make_app, scenario_document
from processor_dev.demo_page.standin import DirectusStandIn
from processor_dev.demo_page.zones import insert_zone
from processor_dev.rally_stage import RallyStage

HOST = "127.0.0.1"


@attrs.define
class RaceControlPage:
    """The running page: where it is, the stand-in's URL, and one-time tokens for its URL."""

    standin: DirectusStandIn
    results: ResultsReader
    page_port: int
    directus_url: str
    live_port: int | None = None  # set by the demo once its live server listens

    @property
    def origins(self) -> tuple[str, ...]:
        """The page's origins, for `LIVE_WS_ALLOWED_ORIGINS` (both names of the loopback)."""
        return (f"http://{HOST}:{self.page_port}", f"http://localhost:{self.page_port}")

    def url(self) -> str:
        """The page's URL with a fresh one-time token (the page trades it for a cookie)."""
        return f"http://{HOST}:{self.page_port}/?token={self.standin.issue_token()}"

    def close(self) -> None:
        self.results.close()


async def start_page(
    nursery: trio.Nursery, stage: RallyStage, database_url: str, *, port: int = DEFAULT_PORT
) -> RaceControlPage:
    """Start both servers as children of `nursery` (cancelled with it) and return the page."""
    standin = DirectusStandIn((stage.event_id,))
    directus = HttpServer(standin.app(), host=HOST, port=0)
    directus_port: int = await nursery.start(directus.run)
    scenario = scenario_document(stage, event_name="Demo rally", stage_name="SS1")
    zone = await trio.to_thread.run_sync(insert_zone, database_url, stage)
    if zone is not None:
        scenario["zones"] = [zone]
    page = RaceControlPage(
        standin=standin,
        results=ResultsReader(database_url),
        page_port=0,
        directus_url=f"http://{HOST}:{directus_port}",
    )
    override = os.environ.get("DEMO_PAGE_LIVE_PORT")

    def live_port() -> int | None:
        return int(override) if override else page.live_port

    server = HttpServer(make_app(standin, scenario, page.results, live_port), host=HOST, port=port)
    page.page_port = await nursery.start(server.run)
    return page
