"""The Lua library: one key layout, includes that resolve, ARGV named at the top, return
codes that match their Python enums, and every script running on Redis and on a Redis
Cluster."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest
from celery import Celery

from celery_graph.keys import (
    COUNTER_KEY_TYPES,
    LIMIT_KEY_TYPES,
    RUN_KEY_TYPES,
    TASK_LIMIT_KEY_TYPES,
    WORKER_KEY_TYPES,
    CounterKeys,
    Keys,
    LimitKeys,
    RunKeys,
    TaskLimitKeys,
    WorkerKeys,
)
from celery_graph.model import NodeRecord
from celery_graph.state import (
    Begin,
    Continuation,
    Ended,
    Finish,
    Mode,
    Revoked,
    State,
    Stored,
    Verdict,
    replies,
    state_for,
)
from celery_graph.state.connection import (
    FUNCTION,
    INCLUDE,
    load_script,
    resolve_includes,
    without_unused,
)
from celery_graph.state.limits import SCRIPTS as LIMIT_SCRIPTS
from celery_graph.state.scripts import SCRIPTS
from celery_graph.state.tasklimits import SCRIPTS as TASK_LIMIT_SCRIPTS
from tests.tasks import join_count, merge, process, split, step

LUA = resources.files("celery_graph.state") / "lua"
NAMES = sorted(p.name[:-4] for p in LUA.iterdir() if p.name.endswith(".lua"))
LIBS = sorted(p.name[:-4] for p in (LUA / "lib").iterdir() if p.name.endswith(".lua"))

# the two layouts: which table a script reads its keys from, and the Python side of it
LAYOUTS = {
    "run": ("K", RunKeys._fields, RUN_KEY_TYPES),
    "worker": ("W", WorkerKeys._fields, WORKER_KEY_TYPES),
    "counters": ("C", CounterKeys._fields, COUNTER_KEY_TYPES),
    "limit": ("L", LimitKeys._fields, LIMIT_KEY_TYPES),
    "tasklimit": ("T", TaskLimitKeys._fields, TASK_LIMIT_KEY_TYPES),
}
LUA_BUILTINS = {"tonumber", "tostring", "ipairs", "pairs", "unpack", "type", "error", "next"}
LUA_KEYWORDS = {"if", "and", "or", "not", "return", "elseif", "while", "until", "in", "local"}


def source(name: str) -> str:
    return (LUA / f"{name}.lua").read_text()


def header_and_body(text: str) -> tuple[list[str], list[str]]:
    """The leading comment block, and the lines after it with comments cut off."""
    lines = text.splitlines()
    n = next((i for i, line in enumerate(lines) if not line.startswith("--")), len(lines))
    return lines[:n], [line.split("--", 1)[0] for line in lines[n:]]


def includes(text: str) -> list[str]:
    """The libraries a text includes, its own includes' first (as load_script does)."""
    out: list[str] = []
    for lib in INCLUDE.findall(text):
        for inner in [*includes(source(f"lib/{lib}")), lib]:
            if inner not in out:
                out.append(inner)
    return out


def key_problems(text: str) -> list[str]:
    """What is wrong with a script's keys: its header against the one layout, the keys
    its body reads against its header."""
    libs = includes(text)
    layouts = [name for name in LAYOUTS if name in libs]
    if len(layouts) != 1:
        return [f"includes {layouts or 'no'} key layout: it must include one of {list(LAYOUTS)}"]
    table, fields, types = LAYOUTS[layouts[0]]
    header, body = header_and_body(text)
    problems = []
    named = set()
    for line in header:
        m = re.match(r"-- KEYS\[(\d+)\]\s+(\w+)\.(\w+)\s.*?\((hash|set|list|zset|string)\b", line)
        if m:
            index, tbl, name, kind = int(m[1]), m[2], m[3], m[4]
            named.add(name)
            if tbl != table or name not in fields:
                problems.append(f"KEYS[{index}] is {tbl}.{name}: not a key of {table}")
            elif fields.index(name) + 1 != index:
                problems.append(
                    f"KEYS[{index}] is {table}.{name}, which the layout passes as "
                    f"KEYS[{fields.index(name) + 1}]"
                )
            elif types[name] != kind:
                problems.append(f"{table}.{name} is a {types[name]}, not a {kind}")
            continue
        m = re.match(r"-- KEYS\[(\d+)", line)
        if m and int(m[1]) <= len(fields):
            problems.append(f"KEYS[{m[1]}] of the layout is not named as {table}.<key>")
    code = "\n".join(body)
    for name in sorted(set(re.findall(rf"\b{table}\.(\w+)", code)) - named):
        problems.append(f"reads {table}.{name}, which its header does not list")
    for index in re.findall(r"\bKEYS\[(\d+)\]", code):
        if int(index) <= len(fields):
            problems.append(f"reads KEYS[{index}] itself instead of {table}.<key>")
    return problems


def test_the_lua_layouts_are_the_python_ones():
    """lib/run.lua, lib/worker.lua and lib/counters.lua name KEYS[1..n] in the order
    keys.py builds them."""
    for lib, (table, fields, _types) in LAYOUTS.items():
        text = source(f"lib/{lib}")
        body = text[text.index(f"local {table} = {{") :]
        body = body[: body.index("}")]
        assert re.findall(r"(\w+) = KEYS\[(\d+)\]", body) == [
            (name, str(i)) for i, name in enumerate(fields, 1)
        ]
    keys, run_id = Keys("p"), "ab" * 16
    layout = keys.run_layout(run_id)
    assert list(layout) == [getattr(keys, name)(run_id) for name in RunKeys._fields]
    assert keys.run_keys(run_id, ["j"], ["m"]) == [
        *layout,
        keys.join(run_id, "j"),
        keys.map(run_id, "m"),
    ]
    assert list(keys.worker_layout("w@h")) == [keys.worker("w@h"), keys.worker_metrics("w@h")]


@pytest.mark.parametrize("name", NAMES)
def test_every_script_takes_the_keys_of_the_one_layout(name):
    assert key_problems(source(name)) == []


def test_a_script_with_run_keys_in_its_own_order_is_caught():
    """The check above fails a script that takes the run's keys in another order, or
    reads them by number (what complete.lua and finish.lua did before the layout)."""
    own_order = (
        "-- KEYS[1] K.run      run record (hash)\n-- KEYS[4] K.done     signal (list)\n"
        '-- KEYS[5] K.sinks    sinks (set)\n-- @include "run"\n'
        "redis.call('RPUSH', K.done, 'x')\nredis.call('SADD', K.sinks, 'n')\n"
    )
    assert key_problems(own_order) == [
        "KEYS[4] is K.done, which the layout passes as KEYS[5]",
        "KEYS[5] is K.sinks, which the layout passes as KEYS[4]",
    ]
    by_number = '-- KEYS[1] K.run  run record (hash)\n-- @include "run"\n'
    by_number += "redis.call('HGET', KEYS[3], 'a')\nredis.call('HGET', K.nodes, 'a')\n"
    assert key_problems(by_number) == [
        "reads K.nodes, which its header does not list",
        "reads KEYS[3] itself instead of K.<key>",
    ]
    wrong_type = '-- KEYS[7] K.leases  leases (hash)\n-- @include "run"\n'
    assert key_problems(wrong_type) == ["K.leases is a zset, not a hash"]
    assert key_problems("return 1\n") == [
        "includes no key layout: it must include one of "
        "['run', 'worker', 'counters', 'limit', 'tasklimit']"
    ]


def lib_functions() -> dict[str, str]:
    """{function name: library} of every function the library defines."""
    out: dict[str, str] = {}
    for lib in LIBS:
        for fn in re.findall(r"^local function (\w+)", source(f"lib/{lib}"), re.MULTILINE):
            assert fn not in out, f"{fn} is defined in lib/{out[fn]}.lua and lib/{lib}.lua"
            out[fn] = lib
    return out


@pytest.mark.parametrize("name", NAMES)
def test_every_include_resolves_and_every_function_called_is_defined_once(name):
    text = load_script(name)
    assert "@include" not in text
    _header, body = header_and_body(source(name))
    code = "\n".join(body)
    defined = set(re.findall(r"\blocal function (\w+)", text))
    unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "''", code)
    called = set(re.findall(r"(?<![\w.:])(\w+)\s*\(", unquoted)) - LUA_KEYWORDS - {"function"}
    assert called - defined - LUA_BUILTINS == set()
    library = lib_functions()
    for fn, lib in library.items():
        count = len(re.findall(rf"\blocal function {fn}\b", text))
        # an included library's function once, unless the script never names it
        used = lib in includes(source(name)) and re.search(rf"\b{fn}\b", without(text, fn))
        assert count == (1 if used else 0), f"{fn}: {count} copies"
    # the clock and the packed node record are read in the library only
    assert "redis.call('TIME')" not in code
    assert "':run'" not in code


def without(text: str, fn: str) -> str:
    """``text`` without the definition of function ``fn`` (its first line to its end)."""
    return FUNCTION.sub(lambda m: "" if m.group(1) == fn else m.group(0), text)


def test_functions_a_script_never_names_are_left_out():
    text = (
        "local function a(x)\n  return b(x)\nend\n"  # named by nothing: out, then b
        "local function b(x)\n  if x then\n    return 1\n  end\nend\n"
        "local function c()\n  return 2\nend\n"
        "-- d is named in this comment only, and stays\n"
        "local function d()\nend\n"
        "return c()\n"
    )
    assert without_unused(text) == (
        "local function c()\n  return 2\nend\n"
        "-- d is named in this comment only, and stays\n"
        "local function d()\nend\n"
        "return c()\n"
    )
    # begin.lua keeps the library functions it calls, and far fewer than it includes
    begin = load_script("begin")
    kept = set(re.findall(r"^local function (\w+)", begin, re.MULTILINE))
    included = {fn for fn, lib in lib_functions().items() if lib in includes(source("begin"))}
    assert {"server_clock", "parse_record", "count_move", "counts_into"} <= kept
    assert "done_signal" not in kept and "close_run" not in kept
    assert len(kept & included) < len(included) * 2 / 3
    for fn in kept:
        assert re.search(rf"\b{fn}\b", without(begin, fn)), fn


def test_every_library_is_included_somewhere_and_names_exist():
    used = {lib for name in NAMES for lib in includes(source(name))}
    assert used == set(LIBS)
    with pytest.raises(FileNotFoundError, match=r"x\.lua includes lib/nope\.lua, which does not"):
        resolve_includes('-- @include "nope"\n', "x.lua")


def test_every_script_file_is_loaded():
    assert set(NAMES) == {
        *SCRIPTS,
        "shared",
        "worker_claim",
        "worker_beat",
        "worker_leave",
        "count",
        *LIMIT_SCRIPTS,
        *TASK_LIMIT_SCRIPTS,
    }


@pytest.mark.parametrize("name", NAMES)
def test_argv_is_named_at_the_top_and_documented(name):
    header, body = header_and_body(source(name))
    documented = {int(i) for i in re.findall(r"^-- ARGV\[(\d+)", "\n".join(header), re.M)}
    used = set()
    for line in body:
        for index in re.findall(r"\bARGV\[(\d+)\]", line):
            used.add(int(index))
            assert line.startswith("local "), f"ARGV[{index}] read outside the locals: {line}"
    assert used <= documented, f"ARGV {sorted(used - documented)} not in the header"


def code_tables(text: str) -> dict[str, dict[str, object]]:
    """{name: {member: value}} of the tables of codes a script defines."""
    out = {}
    for name, members in re.findall(r"^local ([A-Z]\w*) = \{([^}]*)\}", text, re.M):
        pairs = re.findall(r"([A-Z_]+) = ('[^']*'|-?\d+)", members)
        if pairs:
            out[name] = {k: v.strip("'") if v.startswith("'") else int(v) for k, v in pairs}
    return out


@pytest.mark.parametrize("name", NAMES)
def test_return_codes_mirror_the_python_enums(name):
    _header, body = header_and_body(source(name))
    tables = code_tables("\n".join(body))
    mirrored = replies.MIRRORED.get(name, ())
    assert set(tables) == {e.__name__ for e in mirrored}
    for enum in mirrored:
        assert tables[enum.__name__] == {m.name: m.value for m in enum}


def test_text_codes_read_as_their_text():
    assert str(Verdict.OK) == "ok" and f"{Begin.DEADLINE}" == "deadline"
    assert Verdict.GONE == "gone" and Stored.NOT_RUNNING == -1


def test_node_record_parse_and_format():
    record = NodeRecord(3, 1700000000.25, 1700000001.5, "w1@host")
    assert record.format() == "3|1700000000.250000|1700000001.500000|w1@host"
    assert NodeRecord.parse(record.format()) == record
    assert NodeRecord.parse(record.format().encode()) == record
    assert NodeRecord.parse(None) == NodeRecord(0, None, None, None)
    assert NodeRecord.parse("1|1700000000.000001||") == NodeRecord(1, 1700000000.000001)
    assert NodeRecord.parse("1|||a|b") == NodeRecord(1, worker="a|b")  # the rest is the worker


# -- every script, on one Redis and on a Redis Cluster -------------------------------------


def _state(url: str, tag: str) -> State:
    app = Celery(f"lua-{tag}", set_as_current=False)
    app.conf.update(graph_redis_url=url, graph_key_prefix=f"lua-{tag}", graph_result_ttl=60)
    return state_for(app)


@pytest.fixture(params=["redis", "cluster"])
def walk_state(request: pytest.FixtureRequest, tag: str) -> State:
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")
    return _state(url, tag)


def _record(state: State, run_id: str, field: str) -> NodeRecord:
    return NodeRecord.parse(state.client.hget(state.keys.nodes(run_id), f"{field}:run"))


def test_a_run_through_every_run_script(walk_state, tag):
    state, s = walk_state, walk_state.scripts
    spec = (step.bind(id="a") >> (step.bind(id="b") | step.bind(id="c")) >> join_count).compile()
    run_id = f"{tag}{'0' * 20}"
    created, when = state.runs.create(run_id, spec, "{}")
    assert created and abs(float(when) - state.runs.time()) < 5
    before = state.runs.time()

    begun = s.begin(run_id, "a", "w1@host", [])
    assert (begun.status, begun.attempt) == (Begin.RUNNING, 1)
    first = _record(state, run_id, "a")
    assert (first.attempts, first.worker, first.finished) == (1, "w1@host", None)
    assert first.started is not None and abs(first.started - before) < 5
    assert s.lease(run_id, Mode.RENEW, 30, ["a"]) == 1
    assert s.lease(run_id, Mode.REQUEUE, 30, ["a"], attempt=2) == 0  # not the latest attempt
    assert s.lease(run_id, Mode.REQUEUE, 30, ["a"], attempt=1) == 1
    assert s.begin(run_id, "a", "w2@host", []).attempt == 2
    # a record written by Python is read by Lua: lease.lua's requeue compares its attempts
    written = NodeRecord(7, before, None, "w3@host")
    state.client.hset(state.keys.nodes(run_id), "a:run", written.format())
    assert s.lease(run_id, Mode.REQUEUE, 30, ["a"], attempt=6) == 0
    assert s.lease(run_id, Mode.REQUEUE, 30, ["a"], attempt=7) == 1
    assert s.lease(run_id, Mode.REDELIVER, 30, ["a"]) == 1
    assert s.begin(run_id, "a", "w4@host", []).attempt == 8

    arrival = s.complete(spec, run_id, spec.nodes["a"], '"a"')
    assert (arrival.stored, arrival.ended, sorted(arrival.publish)) == (
        Stored.STORED,
        Ended.NO,
        ["b", "c"],
    )
    done = _record(state, run_id, "a")
    assert (done.attempts, done.worker) == (8, "w4@host")
    assert done.finished is not None and done.finished >= (done.started or 0)
    assert s.complete(spec, run_id, spec.nodes["a"], '"a"').stored == Stored.KEPT
    for node in ("b", "c"):
        assert s.begin(run_id, node, "w1@host", ["a"]).upstream == [b'"a"']
        last = s.complete(spec, run_id, spec.nodes[node], f'"{node}"')
    assert last.publish == ["join_count"]  # released through the join's own key (KEYS[9])
    state.shared.set(run_id, "k", '"v"')
    assert state.shared.incr(run_id, "n", 2) == 2
    reclaim = s.reclaim(run_id)
    assert (reclaim.verdict, reclaim.expired) == (Verdict.OK, ())
    assert s.begin(run_id, "join_count", "w1@host", ["b", "c"]).status == Begin.RUNNING
    last = s.complete(spec, run_id, spec.nodes["join_count"], "3")
    assert last.ended == Ended.SUCCEEDED
    # the call that ended the run answers its record as it is now (the end reads no more)
    assert last.record == state.runs.record(run_id) and last.record["status"] == "succeeded"
    assert s.finish(run_id, "failed") == Finish.ALREADY
    assert s.reclaim(run_id).verdict == Verdict.ENDED
    assert s.continuation(run_id, "claim") == Continuation.NONE
    emptied = {state.keys.leases(run_id), state.keys.queued(run_id)}  # Redis drops them
    for key in state.keys.run_keys(run_id, spec.joins):
        ttl = state.client.ttl(key)
        assert ttl == -2 if key in emptied else 0 < ttl <= 60, key


def _snapshot(state: State, run_id: str) -> tuple[object, ...]:
    """Everything a run's scripts write (its record, results, node state and leases)."""
    k, c = state.keys, state.client
    return (
        c.hgetall(k.run(run_id)),
        c.hgetall(k.results(run_id)),
        c.hgetall(k.nodes(run_id)),
        c.zrange(k.leases(run_id), 0, -1, withscores=True),
        c.zrange(k.queued(run_id), 0, -1, withscores=True),
    )


def test_complete_begin_ends_a_node_and_begins_its_successor_or_writes_nothing(walk_state, tag):
    """complete_begin.lua (an eager successor, executor/eager.py): the node succeeds as
    complete.lua would leave it and its successor runs as begin.lua would leave it, never
    queued; any case it does not cover is declined with nothing written."""
    state, s = walk_state, walk_state.scripts
    spec = (step.bind(id="a") >> step.bind(id="b") >> step.bind(id="c")).compile()
    run_id = f"{tag}{'4' * 20}"
    assert state.runs.create(run_id, spec, '{"x": 1}', extra={"flow": "etl"})[0]
    k, c = state.keys, state.client
    s.begin(run_id, "a", "w1@host", [])

    begun = s.complete_begin(run_id, "a", '"A"', "b", "w1@host", ["a"])
    assert begun is not None
    assert (begun.status, begun.inputs, begun.own, begun.upstream) == (
        Begin.RUNNING,
        b'{"x": 1}',
        None,
        [b'"A"'],
    )
    assert (begun.attempt, begun.flow, begun.waited) == (1, "etl", 0.0)
    nodes = state.runs.node_fields(run_id)
    assert (nodes["a:state"], nodes["b:state"]) == ("succeeded", "running")
    a, b = _record(state, run_id, "a"), _record(state, run_id, "b")
    assert a.finished is not None and (a.attempts, a.worker) == (1, "w1@host")
    assert (b.attempts, b.worker, b.finished) == (1, "w1@host", None)
    assert b.started == a.finished and nodes["b:queued"] == nodes["b:sent"]
    assert c.hget(k.results(run_id), "a") == b'"A"'
    assert [f for f, _ in c.zrange(k.leases(run_id), 0, -1, withscores=True)] == [b"b"]
    assert not c.exists(k.queued(run_id))  # never queued: nothing was published
    assert c.ttl(k.leases(run_id)) > 0
    counts = {s: n for s, n in state.runs.counts(run_id).items() if n}
    assert counts == {"succeeded": 1, "running": 1}

    # declined, nothing written: a copy of a node that succeeded, a successor that has a
    # state, an upstream result that is not stored
    before = _snapshot(state, run_id)
    assert s.complete_begin(run_id, "a", '"A"', "b", "w1@host", ["a"]) is None
    assert s.complete_begin(run_id, "b", '"B"', "a", "w1@host", ["b"]) is None
    assert s.complete_begin(run_id, "b", '"B"', "c", "w1@host", ["b", "nothing"]) is None
    assert _snapshot(state, run_id) == before
    # begun without begin.lua, its trace context is kept by a later call
    assert s.keep_trace(run_id, "b", "00-" + "1" * 32 + "-" + "b" * 16 + "-01") is True
    assert s.keep_trace(run_id, "a", "00-" + "1" * 32 + "-" + "a" * 16 + "-01") is False
    assert c.hget(k.nodes(run_id), "b:trace") == b"00-" + b"1" * 32 + b"-" + b"b" * 16 + b"-01"
    assert c.hget(k.nodes(run_id), "a:trace") is None

    # the node's lease was gone (a leases set Redis dropped): the set takes the run's expiry
    c.delete(k.leases(run_id))
    begun = s.complete_begin(run_id, "b", '"B"', "c", "w1@host", ["a", "b"])
    assert begun is not None and begun.upstream == [b'"A"', b'"B"']
    assert [f for f, _ in c.zrange(k.leases(run_id), 0, -1, withscores=True)] == [b"c"]
    assert 0 < c.ttl(k.leases(run_id)) <= state.settings.run_ttl
    # handed back (eager.py, when the successor cannot run here): queued, for anyone
    assert s.lease(run_id, Mode.RELEASE, 30, ["c"], worker="w1@host") == 1
    assert s.begin(run_id, "c", "w2@host", ["b"]).attempt == 2
    assert s.complete(spec, run_id, spec.nodes["c"], '"C"').ended == Ended.SUCCEEDED
    assert s.complete_begin(run_id, "c", '"C"', "a", "w1@host", []) is None  # not running
    assert s.keep_trace(run_id, "c", "00-" + "1" * 32 + "-" + "c" * 16 + "-01") is False


def test_complete_begin_declines_past_the_deadline_and_keeps_a_stored_result(walk_state, tag):
    state, s = walk_state, walk_state.scripts
    spec = (step.bind(id="a") >> step.bind(id="b")).compile()
    late = f"{tag}{'5' * 20}"
    state.runs.create(late, spec, "{}", deadline=3600.0)
    assert s.begin(late, "a", "w1@host", []).status == Begin.RUNNING
    state.client.hset(state.keys.run(late), "deadline", "1.0")  # now long past
    before = _snapshot(state, late)
    assert s.complete_begin(late, "a", '"A"', "b", "w1@host", ["a"]) is None
    assert _snapshot(state, late) == before

    # a result stored by an earlier copy is the one the successor reads
    run_id = f"{tag}{'6' * 20}"
    state.runs.create(run_id, spec, "{}")
    s.begin(run_id, "a", "w1@host", [])
    state.client.hset(state.keys.results(run_id), "a", '"first"')
    begun = s.complete_begin(run_id, "a", '"second"', "b", "w1@host", ["a"])
    assert begun is not None and begun.upstream == [b'"first"']


def test_revoke_cancels_once_and_never_for_a_stale_epoch_or_a_done_node(walk_state, tag):
    state, s = walk_state, walk_state.scripts
    spec = (step.bind(id="a") >> step.bind(id="b") >> step.bind(id="c")).compile()
    run_id = f"{tag}{'2' * 20}"
    state.runs.create(run_id, spec, "{}")
    s.begin(run_id, "a", "w1@host", [])
    s.complete(spec, run_id, spec.nodes["a"], '"a"')
    s.begin(run_id, "b", "w1@host", ["a"])
    error = '{"node": "b", "type": "TaskRevokedError"}'
    assert s.revoke(run_id, "a", "a", 0, error) == Revoked.DONE  # it had succeeded
    assert s.revoke(run_id, "b", "b", 0, error) == Revoked.ENDED
    assert s.revoke(run_id, "b", "b", 0, error) == Revoked.NOT_RUNNING  # once
    status = state.runs.record(run_id)
    assert status["status"] == "cancelled" and status["error"] == error
    nodes = state.runs.node_fields(run_id)
    assert nodes["b:state"] == "failed" and nodes["b:unsettled"] == "1"
    assert "c:state" not in nodes  # not released: a resume's arrivals release it
    assert s.resume(run_id, ["b"]) == (1, [])  # the next epoch
    assert s.revoke(run_id, "b", "b", 0, error) == Revoked.STALE  # <run>:b, before it
    assert s.revoke(run_id, "c", "c", 0, error) == Revoked.STALE
    assert state.runs.record(run_id)["status"] == "running"
    assert s.revoke(run_id, "c", "c", 1, error) == Revoked.ENDED  # <run>:c~1
    assert s.revoke(f"{tag}{'3' * 20}", "x", "x", 0, error) == Revoked.NOT_RUNNING  # no run


def test_a_watched_begin_keeps_its_trace_and_reads_flow_and_links_in_the_same_call(walk_state, tag):
    """What a tracer or error reporter asks of begin.lua (docs/observability.md); an
    unwatched begin keeps and answers nothing more."""
    state, s = walk_state, walk_state.scripts
    spec = (step.bind(id="a") >> (step.bind(id="b") | step.bind(id="c")) >> join_count).compile()
    run_id = f"{tag}{'1' * 20}"
    assert state.runs.create(run_id, spec, "{}", extra={"flow": "etl"})[0]
    nodes = state.keys.nodes(run_id)

    plain = s.begin(run_id, "a", "w1@host", [])
    assert (plain.flow, plain.links) == (None, {})
    assert state.client.hget(nodes, "a:trace") is None
    s.complete(spec, run_id, spec.nodes["a"], '"a"')  # releases b and c
    watched = s.begin(run_id, "b", "w1@host", [], trace="00-" + "1" * 32 + "-" + "b" * 16 + "-01")
    assert (watched.status, watched.flow, watched.links) == (Begin.RUNNING, "etl", {})
    assert state.client.hget(nodes, "b:trace") == b"00-" + b"1" * 32 + b"-" + b"b" * 16 + b"-01"
    untraced = s.begin(run_id, "c", "w1@host", [], trace="")  # watched, nothing to keep
    assert (untraced.flow, state.client.hget(nodes, "c:trace")) == ("etl", None)
    for node in ("b", "c"):
        s.complete(spec, run_id, spec.nodes[node], f'"{node}"')  # the last releases the join

    join = s.begin(run_id, "join_count", "w1@host", ["b"], trace="", links=["a", "b", "c"])
    assert join.links == {"b": "00-" + "1" * 32 + "-" + "b" * 16 + "-01"}
    assert (join.flow, join.upstream, join.attempt) == ("etl", [b'"b"'], 1)
    # a run that is not running answers its status, and the flow when watched
    assert s.finish(run_id, "cancelled") == Finish.ENDED
    ended = s.begin(run_id, "a", "w1@host", [], trace="", links=["b"])
    assert (ended.status, ended.flow, ended.links) == ("cancelled", "etl", {"b": join.links["b"]})
    unwatched = s.begin(run_id, "a", "w1@host", [])
    assert (unwatched.status, unwatched.flow, unwatched.links) == ("cancelled", None, {})


def test_a_map_through_every_map_script(walk_state, tag):
    state, s = walk_state, walk_state.scripts
    spec = (split >> process.map("split") >> merge).compile()
    run_id = f"{tag}{'1' * 20}"
    state.runs.create(run_id, spec, "{}")
    s.begin(run_id, "split", "w1@host", [])
    assert s.complete(spec, run_id, spec.nodes["split"], '["x", "y", "z"]').publish == ["process"]
    node = spec.nodes["process"]
    assert s.begin(run_id, "process", "w1@host", ["split"], expands=True).status == Begin.RUNNING
    assert s.expand(run_id, node, 3) is True
    assert s.expand(run_id, node, 3) is False  # expanded already
    assert s.begin(run_id, "process", "w1@host", ["split"], expands=True).status == Begin.DONE
    s.begin(run_id, "process#0", "w1@host", [])
    assert s.map_arrive(run_id, node, 0, 3, '"X"') == (Stored.STORED, 1, 3)
    assert _record(state, run_id, "process#0").finished is not None
    assert s.store_items(run_id, "process", [(1, '"Y"')]) == 1
    assert s.finish(run_id, "cancelled") == Finish.ENDED
    assert s.finish(run_id, "cancelled") == Finish.ALREADY
    # computed after the run ended: kept, within the run's expiry, but not arrived
    assert s.store_items(run_id, "process", [(2, '"Z"')]) == Stored.NOT_RUNNING
    assert s.map_arrive(run_id, node, 1, 3, '"Y"') == (Stored.NOT_RUNNING, 0, 0)
    assert 0 < state.client.ttl(state.keys.results(run_id)) <= 60
    assert s.resume(run_id, ["process#1", "process#2"]) == (1, [])
    assert state.runs.record(run_id)["status"] == "running"
    for unit, value in ((1, '"Y"'), (2, '"Z"')):
        s.begin(run_id, f"process#{unit}", "w1@host", [])
        arrived = s.map_arrive(run_id, node, unit, 3, value)
    assert arrived == (Stored.KEPT, 3, 3)
    assert s.map_results(run_id, "process", 3) == b'["X","Y","Z"]'


def test_worker_scripts(walk_state, tag):
    workers = walk_state.workers
    claim = workers.claim(f"w-{tag}", "t1", {"pid": 1}, ttl=30, live_window=10)
    assert claim.claimed
    assert not workers.claim(f"w-{tag}", "t2", {"pid": 2}, ttl=30, live_window=10).claimed
    assert workers.beat(f"w-{tag}", "t1", {"state": "up"}, in_flight=1, ttl=30)
    assert not workers.beat(f"w-{tag}", "t2", {}, in_flight=None, ttl=30)
    # count.lua: several counters of one hash at once (no MULTI: redis-py's cluster client
    # refuses transactions before 6.x), whole numbers and floats, and the hash's TTL
    workers.count_task(f"w-{tag}", "t", "q", "succeeded", 0.25, (0.1, 1.0), ttl=30)
    workers.count_task(f"w-{tag}", "t", "q", "other", None, (0.1, 1.0), ttl=30)
    assert workers.counters(f"w-{tag}") == {
        "in_flight": 1,  # the beat's
        "processed": 2,
        "succeeded": 1,
        "n|t|q|succeeded": 1,
        "n|t|q|other": 1,
        "runtime_total": 0.25,
        "s|t|q": 0.25,
        "b|t|q|1.0": 1,
        "b|t|q|+Inf": 1,
    }
    assert 0 < walk_state.client.ttl(walk_state.keys.worker_metrics(f"w-{tag}")) <= 30
    workers.count_run("started", None, (1.0,), ttl=30)
    workers.count_run("succeeded", 0.5, (1.0,), ttl=30, flow="etl")
    workers.count_reconciler({"resent": 2, "lost": 1, "reclaimed": 0}, ttl=30)
    assert workers.run_counters() == {
        "f||started": 1,
        "f|etl|succeeded": 1,
        "f|etl|s": 0.5,
        "f|etl|b|1.0": 1,
        "f|etl|b|+Inf": 1,
        "r|resent": 2,
        "r|lost": 1,
    }
    workers.remove(f"w-{tag}", "t1")
    assert walk_state.client.exists(walk_state.keys.worker(f"w-{tag}")) == 0


def test_the_sweep_clock_and_what_workers_hold(walk_state, tag):
    """The reconciler's reads and writes outside the scripts work on a Cluster too (its
    pipelines refuse TIME, and a worker's keys are in their own slots)."""
    runs, workers = walk_state.runs, walk_state.workers
    now, swept, hold = runs.sweep_clock()
    assert (swept, hold) == (None, None) and now > 0
    runs.mark_swept(now, hold=now + 5)
    assert runs.sweep_clock()[1:] == (now, now + 5)
    for i in range(3):
        held = {"held": json.dumps([f"{'ab' * 16}:n#{i}"])}
        assert workers.claim(f"w{i}-{tag}", "t", held, ttl=30, live_window=10).claimed
    assert workers.held() == {f"{'ab' * 16}:n#{i}" for i in range(3)}
