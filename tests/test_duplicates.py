"""Every message of a run is delivered twice: what others observe still happens once."""

from __future__ import annotations

from celery.signals import after_task_publish

from tests.support.helpers import assert_order, wait_for
from tests.tasks import read_trace, t1, t2, t3, t4, t5, t6, t7, t8
from tests.test_engine import EIGHT_EDGES


def test_every_message_duplicated_still_dispatches_each_node_once(app, published, tag):
    flow = t1 >> ((t2 >> t5) | t3 | (t4 >> (t6 | t7))) >> t8.bind(tag=tag)  # unique graph
    graph_id = flow.compile().graph_id

    def duplicate(sender=None, body=None, headers=None, routing_key=None, **kw):
        if not headers or headers.get("cgtest_dup"):
            return
        kwargs = body[1] if isinstance(body, (list, tuple)) else {}
        ctx = kwargs.get("_graph") or {}
        if ctx.get("g") == graph_id:
            app.send_task(
                sender,
                kwargs=kwargs,
                task_id=headers["id"],
                headers={"cgtest_dup": True},
                queue=routing_key,
            )

    def ours() -> list[dict]:
        return [m for m in published if (m["body"][1].get("_graph") or {}).get("g") == graph_id]

    after_task_publish.connect(duplicate, weak=False)
    try:
        run = flow.apply_async(tag=tag)
        assert run.get(timeout=30) == "t8"
        # the publisher's after_task_publish receivers run once the broker has the message:
        # another worker thread may have run the last node, and the run may have ended,
        # before the publishing thread got as far as sending that node's copy
        wait_for(
            lambda: sum(1 for m in ours() if m["headers"].get("cgtest_dup")) >= 7,
            what="a copy of each of the 7 node messages",
        )
    finally:
        after_task_publish.disconnect(duplicate)
    mine = ours()
    # a message sent again (a retry) is not a new dispatch
    engine_sent = [
        m["body"][1]["_graph"]["n"]
        for m in mine
        if not m["headers"].get("cgtest_dup") and not m["headers"].get("retries")
    ]
    dup_sent = [m for m in mine if m["headers"].get("cgtest_dup")]
    # each node published once; t5, t2's only successor, runs as an eager successor in
    # t2's worker (executor/eager.py): it has no message to duplicate
    assert sorted(engine_sent) == [f"t{i}" for i in range(1, 9) if i != 5]
    assert len(dup_sent) >= 7  # and each was delivered a second time (retries re-send too)
    trace = read_trace(tag)
    for before, after in EIGHT_EDGES:
        assert_order(trace, before, after)
    assert run.results() == {f"t{i}": f"t{i}" for i in range(1, 9)}
