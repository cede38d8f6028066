"""The demo's Directus stand-in and page server, adversarially: tokens work once, sessions are
random and required, the stand-in answers like Directus, and the page server serves nothing but
its own files.

The browser end to end (chromium) is tests/integration/dev/test_race_control_page.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import psycopg
import pytest
import trio

from processor_dev.demo import prepare_stage
from processor_dev.demo_page.serve import RaceControlPage, start_page
from processor_dev.demo_page.standin import COOKIE, DirectusStandIn, session_cookie
from processor_dev.rally_stage import RallyStage, StageSettings
from processor_dev.simulate import Scenario

STAGE = RallyStage.generate(Scenario(devices=4, rate=4, seed=3), StageSettings())
OTHER_EVENT = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
async def page(database_url: str) -> AsyncIterator[RaceControlPage]:
    prepare_stage(database_url, STAGE)
    async with trio.open_nursery() as nursery:
        running = await start_page(nursery, STAGE, database_url, port=0)
        yield running
        running.close()
        nursery.cancel_scope.cancel()


def client(base: str, **kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, trust_env=False, timeout=10, **kwargs)  # type: ignore[arg-type]


async def signed_in(page: RaceControlPage) -> str:
    """Redeem a fresh token like the browser does; the session cookie's value."""
    async with client(f"http://127.0.0.1:{page.page_port}") as http:
        token = page.url().split("token=", 1)[1]
        response = await http.get("/", params={"token": token})
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in cookie, cookie
    session = session_cookie(cookie.split(";", 1)[0])
    assert session
    return session


def test_tokens_are_one_time_and_sessions_random() -> None:
    standin = DirectusStandIn((STAGE.event_id,))
    token = standin.issue_token()
    first = standin.redeem(token)
    assert first is not None and standin.user_of(first)
    assert standin.redeem(token) is None  # spent
    assert standin.redeem("") is None
    assert standin.user_of(token) is None  # a token is not a session
    second = standin.redeem(standin.issue_token())
    assert second not in (None, first)
    assert len({standin.issue_token() for _ in range(100)}) == 100


def test_session_cookie_parsing_is_strict() -> None:
    assert session_cookie(None) is None
    assert session_cookie("") is None
    assert session_cookie("other=1") is None
    assert session_cookie(f"{COOKIE}=") is None
    assert session_cookie(f'a=1; {COOKIE}=abc; b="2"') == "abc"
    assert session_cookie('\x00;;"=') is None


async def test_standin_answers_like_directus(page: RaceControlPage) -> None:
    session = await signed_in(page)
    async with client(page.directus_url) as http:
        # who: 401 without or with a wrong credential, 200 with the session (cookie or Bearer)
        assert (await http.get("/users/me", params={"fields": "id"})).status_code == 401
        wrong = {"Cookie": f"{COOKIE}=forged"}
        assert (await http.get("/users/me", headers=wrong)).status_code == 401
        bearer = {"Authorization": "Bearer forged"}
        assert (await http.get("/users/me", headers=bearer)).status_code == 401
        for headers in ({"Cookie": f"{COOKIE}={session}"}, {"Authorization": f"Bearer {session}"}):
            me = await http.get("/users/me", params={"fields": "id"}, headers=headers)
            assert me.status_code == 200
            assert me.json()["data"]["id"].startswith("demo-user-")
        # what: the demo's event only
        cookie = {"Cookie": f"{COOKIE}={session}"}
        own = await http.get(f"/items/events/{STAGE.event_id}", headers=cookie)
        assert own.status_code == 200 and own.json()["data"]["id"] == STAGE.event_id
        assert (await http.get(f"/items/events/{OTHER_EVENT}", headers=cookie)).status_code == 403
        anonymous = await http.get(f"/items/events/{STAGE.event_id}")
        assert anonymous.status_code == 401
        assert "errors" in anonymous.json()
        # the re-check's reads: the events list (by filter) and the race-control collections
        both = orjson.dumps({"id": {"_in": [STAGE.event_id, OTHER_EVENT]}}).decode()
        listed = await http.get("/items/events", params={"filter": both}, headers=cookie)
        assert listed.json() == {"data": [{"id": STAGE.event_id}]}
        assert (
            await http.get("/items/events", params={"filter": "[]"}, headers=cookie)
        ).status_code == 400
        assert (await http.get("/items/events", params={"filter": both})).status_code == 401
        for collection in ("timing_records", "stage_results", "speed_violations", "alerts"):
            read = await http.get(f"/items/{collection}", params={"limit": "0"}, headers=cookie)
            assert read.json() == {"data": []}
            assert (await http.get(f"/items/{collection}")).status_code == 401
        assert (await http.get("/items/directus_users", headers=cookie)).status_code == 403


async def test_page_requires_a_session_and_serves_only_its_files(
    page: RaceControlPage, database_url: str
) -> None:
    base = f"http://127.0.0.1:{page.page_port}"
    async with client(base) as http:
        assert (await http.get("/")).status_code == 401
        assert (await http.get("/", params={"token": "guess"})).status_code == 401
        assert (await http.get("/scenario.json")).status_code == 401
        assert (
            await http.get("/results.json", params={"stage": STAGE.stage_id})
        ).status_code == 401
        for public in ("/app.js", "/style.css"):
            response = await http.get(public)
            assert response.status_code == 200
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "connect-src 'self' ws://127.0.0.1:*" in csp
            assert response.headers["cache-control"] == "no-store"
        for hidden in ("/pages.py", "/..%2fpages.py", "/static%2fapp.js", "/index.html", "/x"):
            assert (await http.get(hidden)).status_code == 404, hidden
    session = await signed_in(page)
    async with client(base, cookies={COOKIE: session}) as http:
        index = await http.get("/")
        assert index.status_code == 200 and "/app.js" in index.text
        # the live server is not listening yet: say so instead of a port that does not exist
        assert (await http.get("/scenario.json")).status_code == 503
        page.live_port = 12345
        scenario = (await http.get("/scenario.json")).json()
        assert scenario["live"] == {"port": 12345, "path": "/live"}
        assert scenario["event"]["id"] == STAGE.event_id
        assert [c["kind"] for c in scenario["controls"]][::7] == ["start", "finish"]
        assert len(scenario["route"]) == len(STAGE.route.points)
        # the demo's speed zone: in the page's document and in speed_zones
        (zone,) = scenario["zones"]
        assert zone["max_speed_kmh"] == 80 and len(zone["points"]) > 2
        assert zone["start_control_id"] == STAGE.controls[1].id
        assert {e["number"] for e in scenario["entries"]} == {e.number for e in STAGE.entries}
        assert (await http.get("/results.json", params={"stage": OTHER_EVENT})).status_code == 404
        results = await http.get("/results.json", params={"stage": STAGE.stage_id})
        assert results.status_code == 200 and results.json()["results"] == []
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT id::text, limit_kmh FROM speed_zones").fetchall()
    assert rows == [(zone["id"], 80.0)]


async def test_results_fallback_has_the_protocol_shape(
    page: RaceControlPage, database_url: str
) -> None:
    entry = STAGE.entries[0]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO stage_results (id, stage_id, entry_id, status, started_at, finished_at,"
            " elapsed_ms, penalty_ms, total_ms, controls_passed, controls_missed, position,"
            " class_position, gap_ms) VALUES (gen_random_uuid(), %s, %s, 'finished',"
            " '2026-01-01T10:00:00Z', '2026-01-01T10:02:00.5Z', 120500, 300000, 420500, 8, 1, 1,"
            " 1, 0)",
            (STAGE.stage_id, entry.id),
        )
    session = await signed_in(page)
    async with client(f"http://127.0.0.1:{page.page_port}", cookies={COOKIE: session}) as http:
        rows = (await http.get("/results.json", params={"stage": STAGE.stage_id})).json()
    assert rows["results"] == [
        {
            "entry_id": entry.id,
            "number": entry.number,
            "class": entry.klass,
            "status": "finished",
            "started_at": "2026-01-01T10:00:00.000000Z",
            "finished_at": "2026-01-01T10:02:00.500000Z",
            "elapsed_ms": 120500,
            "penalty_ms": 300000,
            "total_ms": 420500,
            "controls_passed": 8,
            "controls_missed": 1,
            "position": 1,
            "class_position": 1,
            "gap_ms": 0,
        }
    ]
