"""The runs listing over records shaped like the engine's (written straight into a private
key prefix): cursors over equal start times and expired records, the scan budget, the
secondary indexes against a brute-force answer, and the time at 100,000 runs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_graph.state import state_for
from celery_graph.testing import PrivateRedis
from celery_graph.ui import start
from celery_graph.ui.listing import Cursor, QueryError, RunLister, RunQuery
from tests.support.ui import Http, index_runs, seed_runs, unseed_runs

STATES = ["succeeded", "failed", "succeeded", "cancelled", "succeeded", "running"]
FLOWS = ["etl", "report", "etl", "nightly"]
BASE = 1_800_000_000.0


class Seeded:
    def __init__(self, app: Celery, client, prefix: str, count: int, ties: int) -> None:
        self.app = app
        self.client = client
        self.prefix = prefix
        self.count = count
        self.store = state_for(app).index
        # what the seed wrote: id -> (score, state, flow), like the Lua script does it
        self.runs = {}
        for i in range(count):
            self.runs[f"{i + 1:032x}"] = (
                BASE - (i // ties),
                STATES[i % len(STATES)],
                FLOWS[i % len(FLOWS)],
            )

    def expected(self, state=None, flow=None, since=None, until=None) -> list[str]:
        """Brute force: every live run that matches, newest first (ties: higher id first)."""
        live = [
            (s, rid)
            for rid, (s, st, fl) in self.runs.items()
            if (state is None or st == state)
            and (flow is None or fl == flow)
            and (since is None or s >= since)
            and (until is None or s <= until)
        ]
        return [rid for _, rid in sorted(live, reverse=True)]

    def expire(self, run_ids) -> None:
        self.client.delete(*(self.store.keys.run(r) for r in run_ids))
        for r in run_ids:
            del self.runs[r]

    def index(self, since: float) -> None:
        """Write the secondary indexes, as the engine would, for runs from ``since`` on."""
        index_runs(self.client, self.store, since, FLOWS)


def seeded(redis_url, rclient, count: int, ties: int = 1) -> Iterator[Seeded]:
    prefix = f"cgtest-uilist-{uuid.uuid4().hex[:8]}"
    app = Celery("cgtest_uilist", set_as_current=False)
    app.conf.update(graph_redis_url=redis_url, graph_key_prefix=prefix)
    seed_runs(rclient, prefix, count, base=BASE, step=1.0, states=STATES, flows=FLOWS, ties=ties)
    try:
        yield Seeded(app, rclient, prefix, count, ties)
    finally:
        unseed_runs(rclient, prefix)


@pytest.fixture()
def small(redis_url, rclient) -> Iterator[Seeded]:
    yield from seeded(redis_url, rclient, 1_000, ties=3)


def pages(lister: RunLister, **query) -> tuple[list[str], list[dict]]:
    """Follow the cursor to the end; every page's answer."""
    out, answers, cursor = [], [], None
    for _ in range(10_000):
        page = lister.page(RunQuery(cursor=Cursor.parse(cursor) if cursor else None, **query))
        answers.append(page.as_json())
        out += [r["run_id"] for r in page.runs]
        cursor = page.next
        if cursor is None:
            return out, answers
    raise AssertionError("the cursor never ended")


def lister_for(s: Seeded, **options) -> RunLister:
    return RunLister(s.store, lambda row: row.fields.get("flow"), **options)


def test_pages_cover_every_run_once_in_order_across_ties_and_expired_records(small):
    small.expire([f"{i:032x}" for i in range(5, 400, 7)])  # listed, but their record is gone
    lister = lister_for(small, batch=64)
    got, answers = pages(lister, limit=100)
    assert got == small.expected()
    assert all(a["source"] == "scan" and not a["partial"] for a in answers)
    assert answers[0]["total"] == 1_000  # index entries in range, expired ones included
    # an unfiltered page reads a page of records, and one batch more for expired ones
    assert answers[0]["scanned"] <= 100 + 64


@pytest.mark.parametrize(
    "query",
    [
        {"state": "failed"},
        {"flow": "report"},
        {"state": "succeeded", "flow": "etl"},
        {"state": "cancelled", "since": BASE - 200, "until": BASE - 20},
        {"state": "running"},
        {"flow": "nobody"},
    ],
)
def test_filters_without_indexes_match_brute_force(small, query):
    lister = lister_for(small, batch=64)
    got, answers = pages(lister, limit=37, **query)
    assert got == small.expected(**query)
    source = "running" if query.get("state") == "running" else "scan"
    assert {a["source"] for a in answers} <= {source}


def test_a_scan_stops_at_its_budget_and_the_cursor_goes_on(small):
    lister = lister_for(small, batch=50, budget=150)
    first = lister.page(RunQuery(state="cancelled", flow="nightly", limit=100))
    assert first.partial and first.scanned == 150 and first.next
    assert "read 150 runs" in first.notes[0]
    got, answers = pages(lister, state="cancelled", flow="nightly", limit=100)
    assert got == small.expected(state="cancelled", flow="nightly")
    assert any(a["partial"] for a in answers)


@pytest.mark.parametrize(
    "query",
    [
        {"state": "failed"},
        {"flow": "report"},
        {"state": "succeeded", "flow": "etl"},
        {"state": "cancelled", "since": BASE - 200, "until": BASE - 20},
        {"flow": "etl", "since": BASE - 100},
    ],
)
def test_indexes_answer_like_brute_force_and_a_scan_covers_older_runs(small, query):
    small.index(since=BASE - 150)  # runs before the marker are in no index
    # an index entry whose run was resumed (running again) is only a hint
    resumed = small.expected(state="failed")[0]
    small.client.hset(small.store.keys.run(resumed), "status", "running")
    score, _, flow = small.runs[resumed]
    small.runs[resumed] = (score, "running", flow)
    lister = lister_for(small, batch=64)
    got, answers = pages(lister, limit=40, **query)
    assert got == small.expected(**query)
    sources = {a["source"] for a in answers}
    assert sources == ({"index"} if query.get("since", 0) >= BASE - 150 else {"index+scan"})


def test_search_by_run_id_prefix_and_idempotency_key(small):
    lister = lister_for(small)
    rid = f"{0x3A7:032x}"
    assert [(r["run_id"], r["matched"]) for r in lister.page(RunQuery(search=rid)).runs] == [
        (rid, "run id")
    ]
    found = lister.page(RunQuery(search=rid[:31], limit=20)).runs
    assert sorted(r["run_id"] for r in found) == [f"{i:032x}" for i in range(0x3A0, 0x3B0)]
    assert {r["matched"] for r in found} == {"run id prefix"}
    assert lister.page(RunQuery(search="not-a-key-of-any-run")).runs == []


def test_queries_are_checked():
    def q(**params):
        return RunQuery.from_params(lambda name: params.get(name))

    assert q(state="failed", limit="10").limit == 10
    for params, words in [
        ({"state": "done"}, "state='done'"),
        ({"limit": "501"}, "limit"),
        ({"since": "nan"}, "since"),
        ({"cursor": "x"}, "cursor"),
    ]:
        with pytest.raises(QueryError, match=words):
            q(**params)


@pytest.fixture()
def own_redis() -> Iterator[PrivateRedis]:
    """A Redis of its own: seeding 100,000 runs is one script that holds a server for
    seconds on a loaded machine, and every other test on a shared one got BUSY meanwhile."""
    server = PrivateRedis().start()
    try:
        yield server
    finally:
        server.cleanup()


def test_listing_100000_runs(own_redis):
    """The runs page at 100,000 runs in the index: the first page, a page filtered through
    the indexes, a filtered page without them (scan budget), a search. Times printed
    (pytest -s) and held to generous bounds on this shared 2-core machine."""
    redis_url = own_redis.url
    rclient = redis.Redis.from_url(redis_url)
    t = time.perf_counter()
    gen = seeded(redis_url, rclient, 100_000)
    s = next(gen)
    seeded_in = time.perf_counter() - t
    try:
        timings = {}

        def timed(name: str, lister: RunLister, repeat: int = 3, **query):
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                page = lister.page(RunQuery(**query))
                best = min(best, time.perf_counter() - t0)
            timings[name] = best
            return page

        lister = lister_for(s)
        page = timed("first page, 50 runs", lister, limit=50)
        assert len(page.runs) == 50 and page.total == 100_000
        page = timed("search by run id", lister, search=f"{54321:032x}")
        assert len(page.runs) == 1
        page = timed(
            "state=failed & flow=etl, no indexes (reads its budget, 10,000)",
            lister,
            repeat=1,
            state="failed",
            flow="etl",
            limit=50,
        )
        assert page.runs == [] and page.partial and page.scanned == 10_000  # none exists
        t0 = time.perf_counter()
        s.index(since=BASE - 100_000)
        indexed_in = time.perf_counter() - t0
        page = timed("flow=nightly, indexed", lister, flow="nightly", limit=50)
        assert len(page.runs) == 50 and page.source == "index"
        page = timed(
            "state=cancelled & flow=nightly, indexed",
            lister,
            state="cancelled",
            flow="nightly",
            limit=50,
        )
        assert [r["run_id"] for r in page.runs] == s.expected(state="cancelled", flow="nightly")[
            :50
        ]
        # and through the web server: GET /api/runs, JSON and all
        server = start(s.app)
        try:
            client = Http(server.url.rstrip("/"))
            for name, path in [
                ("GET /api/runs", "/api/runs"),
                ("GET /api/runs?flow=nightly (indexed)", "/api/runs?flow=nightly"),
            ]:
                best = float("inf")
                for _ in range(3):
                    t0 = time.perf_counter()
                    assert len(client.get(path)["runs"]) == 50
                    best = min(best, time.perf_counter() - t0)
                timings[name] = best
        finally:
            server.stop()
        print(f"\nseeded 100,000 runs in {seeded_in:.2f}s, indexed in {indexed_in:.2f}s")
        for name, seconds in timings.items():
            print(f"  {name}: {seconds * 1000:.1f} ms")
        # bounds that a page read in the size of the page meets even when the host takes
        # most of this VM's CPU (0.34 s seen for the first page under 68% steal), and
        # that reading the 100,000 runs (seconds for each 10,000: the last line) cannot
        assert timings["first page, 50 runs"] < 1.0
        assert timings["flow=nightly, indexed"] < 1.0
        assert timings["state=cancelled & flow=nightly, indexed"] < 1.5
        assert timings["search by run id"] < 0.5
        assert timings["GET /api/runs"] < 1.5
        assert timings["state=failed & flow=etl, no indexes (reads its budget, 10,000)"] < 15
    finally:
        next(gen, None)
