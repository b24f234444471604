"""Graph tasks of the tests of what follows the end of a run: handlers, compensations.
Each records what it did in the trace list of its ``tag`` (tests.tasks.trace, note)."""

from __future__ import annotations

from celery_graph import child, task
from tests.tasks import note, trace


@task
def charge(tag=None, amount: int = 10):
    trace(tag, "charge")
    return {"charged": amount}


@task
def reserve(tag=None, item: str = "book"):
    trace(tag, "reserve")
    return {"reserved": item}


@task
def refund(charge, tag=None):
    note(tag, "refund", charge)
    return "refunded"


@task
def release(reserve, tag=None, delay: float = 0.0):
    note(tag, "release", reserve, delay)
    return "released"


@task
def undo_fails(reserve, tag=None):
    trace(tag, "undo_fails")
    raise RuntimeError("the undo failed")


@task
def ship(tag=None):
    trace(tag, "ship")
    raise ValueError("no courier")


@task
def alert(failure, tag=None, delay: float = 0.0):
    note(tag, "alert", failure, delay)
    return "alerted"


@task
def alert_fails(failure, tag=None):
    trace(tag, "alert_fails")
    raise RuntimeError("the pager is down")


@task
def bye(outcome, tag=None, delay: float = 0.0):
    note(tag, "bye", outcome, delay)
    return "bye"


@task
def wait_a_bit(tag=None, delay: float = 1.0):
    note(tag, "waited", delay=delay)
    return "waited"


@task
def prepare(tag=None):
    trace(tag, "prepare")
    return "prepared"


@task
def ship_if_approved(approval, tag=None):
    note(tag, "ship", approval)
    return "shipped" if approval.get("approved") else "not shipped"


@task
def invoice(customer, tag=None, delay: float = 0.0):
    note(tag, f"invoice:{customer}", delay=delay)
    if customer == "bad":
        raise ValueError(f"no address for {customer}")
    return {"customer": customer, "total": len(customer)}


@task
def per_customer(customer, tag=None, delay: float = 0.0):
    return child(invoice.bind(delay=delay).as_graph("invoice"), customer=customer, tag=tag)


def limited_sync(tag):
    """A two-node flow, at most one run at once ('start:<tenant>' ... 'end:<tenant>' in
    the trace around each); its name carries the tag, so each test has its own limit."""
    from tests.tasks import occupy

    flow = occupy.bind(id="enter", mark="start", seconds=0.3) >> occupy.bind(
        id="leave", mark="end", seconds=0.3
    )
    return flow.with_name(f"limited-sync-{tag}").with_concurrency(1)


@task
def sync_tenant(customer, tag=None):
    """Starts a run of limited_sync(tag) for one tenant, as a child."""
    return child(limited_sync(tag), tag=tag, tenant=customer)


@task
def summary(per_customer, tag=None):
    trace(tag, "summary")
    return {"invoiced": per_customer}


@task
def customers(names: str = "acme,globex"):
    return names.split(",")


@task
def report(per_customer, tag=None):
    trace(tag, "report")
    return sorted(r["customer"] for r in per_customer)
