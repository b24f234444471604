"""What a resume sends again, from a run's node states: a pure function of the graph."""

from __future__ import annotations

from .spec import GraphSpec


def resume_frontier(
    spec: GraphSpec,
    fields: dict[str, str],
    results: set[str],
    leases: dict[str, float],
    now: float,
    arrived: dict[str, set[int]] | None = None,
) -> tuple[list[str], list[tuple[str, int]], list[str], list[tuple[str, int | None]]]:
    """What a resume sends again: the nodes that are not done, whose predecessors are all
    done, and that are not running under a live lease; the missing items of maps that
    expanded already; and the skips to pass on. Done means ended with its arrivals made: a
    stored result, skipped by a branch, or failed under a group policy that tolerated it.
    A node that ended after its run did (":unsettled") is sent again: the copy finds its
    result and makes the arrivals; so is a member whose failure broke its group's policy.
    ``arrived``: the units of each expanded map whose arrival is counted (a unit that
    stored its results after its run ended is sent again to arrive); without it, units
    with every result stored count as arrived. Last, the nodes and units left running
    (node, unit or None): resume.lua sends those that end before it reopens the run."""

    def done(node_id: str) -> bool:
        state = fields.get(f"{node_id}:state")
        if fields.get(f"{node_id}:unsettled"):
            return False
        if state == "failed":
            return spec.nodes[node_id].tolerant is not None
        return state == "skipped" or (state == "succeeded" and node_id in results)

    def in_flight(field: str) -> bool:
        return fields.get(f"{field}:state") == "running" and leases.get(field, 0) > now

    frontier: list[str] = []
    items: list[tuple[str, int]] = []
    skips: list[str] = []
    watch: list[tuple[str, int | None]] = []
    for node_id in spec.order:
        node = spec.nodes[node_id]
        if fields.get(f"{node_id}:state") == "skipping":
            skips.append(node_id)  # to be skipped, but not passed on yet: never sent
            continue
        if done(node_id) or not all(done(p) for p in node.preds):
            continue
        if in_flight(node_id):
            watch.append((node_id, None))
            continue
        count = fields.get(f"{node_id}:items")
        if count is None:
            frontier.append(node_id)
            continue
        size = node.map_chunk or 1
        counted = (arrived or {}).get(node_id)
        total = int(count)
        if counted is not None:
            units = [u for u in range(node.units(total)) if u not in counted]
        else:
            units = [
                u
                for u in range(node.units(total))
                if any(
                    f"{node_id}#{i}" not in results
                    for i in range(u * size, min((u + 1) * size, total))
                )
            ]
        missing: list[int] = []
        for u in units:
            if in_flight(node.unit_field(u)):
                watch.append((node_id, u))
            else:
                missing.append(u)
        # every item stored but the map node not completed: a copy of one unit completes it
        items += [(node_id, unit) for unit in missing or ([] if units else [0])]
    return frontier, items, skips, watch
