"""What the Lua scripts answer: their return codes as enums, and the decoded replies.

Each enum mirrors a table of the same name and members in the scripts that answer it
(``local Stored = {STORED = 1, ...}`` in complete.lua); a test holds every pair equal.
The text enums compare equal to their text, the int enums to their number.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import NamedTuple


class TextCode(str, Enum):
    """A code a script answers (or takes) as text; ``str()`` is the text itself."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Stored(IntEnum):
    """complete.lua, map_arrive.lua, item.lua: what became of a result."""

    STORED = 1  # stored by this call
    KEPT = 0  # one was stored already (kept; results never change)
    NOT_RUNNING = -1  # the run is not running: nothing arrived
    IGNORED = -2  # a failure of a node whose result is stored: ignored


class Ended(IntEnum):
    """complete.lua: whether the arrival ended the run."""

    NO = 0
    SUCCEEDED = 1  # its last sink arrived
    FAILED = 2  # a group's failure policy broke


class Finish(IntEnum):
    """finish.lua: ending a run as failed or cancelled."""

    ENDED = 1  # this call ended it
    ALREADY = 0  # it had ended already
    IGNORED = -1  # a failing copy of a message whose result is stored


class Revoked(TextCode):
    """revoke.lua: a node message revoked through Celery."""

    ENDED = "ended"  # this call cancelled the run
    NOT_RUNNING = "not-running"  # the run is not running (ended, or gone)
    STALE = "stale"  # a task id of an earlier epoch: the run was resumed since
    DONE = "done"  # the revoked node (or unit) had succeeded already


class Begin(TextCode):
    """begin.lua's first answer, besides the status of a run that is not running."""

    RUNNING = "running"  # go ahead (or the result is stored: do not call again)
    DEADLINE = "deadline"  # the run is past its deadline
    DONE = "done"  # the node ended without a result, or the map expanded already
    BUSY = "busy"  # another attempt holds the node: this copy runs nothing
    UNRELEASED = "unreleased"  # the state has not released the node (it is behind)


class Fused(TextCode):
    """complete_begin.lua: a node completed and its kept successor began, in one call."""

    BEGUN = "begun"  # both done: the successor runs in this process, leased as running
    DECLINED = "declined"  # nothing written: take the general path (complete.lua)


class Verdict(TextCode):
    """reclaim.lua: the reconciler's look at a run."""

    GONE = "gone"
    ENDED = "ended"
    DEADLINE = "deadline"
    POISON = "poison"
    OK = "ok"
    QUEUED = "queued"


class Acquire(TextCode):
    """task_acquire.lua: may a node of a task with fleet-wide limits start?"""

    OK = "ok"
    FULL = "full"
    RATE = "rate"


class Expiry(TextCode):
    """reclaim.lua: what a lease that ran out needs."""

    LOST = "lost"  # running, its worker stopped renewing
    QUEUED = "queued"  # published (or waiting for a retry) and never started
    SKIP = "skip"  # a skip nobody passed on
    MAP = "map"  # a map whose units all arrived, not completed
    TIMEOUT = "timeout"  # a wait_for() node not signalled within its timeout


class Mode(TextCode):
    """lease.lua's modes."""

    RENEW = "renew"
    REQUEUE = "requeue"
    REDELIVER = "redeliver"
    RELEASE = "release"


class Continuation(TextCode):
    """continue.lua: the claim on a canvas continuation."""

    CLAIMED = "claimed"  # go ahead
    BUSY = "busy"  # another process holds a live claim
    DONE = "done"  # continued already
    NONE = "none"  # no canvas waits on this run


class After(TextCode):
    """after.lua: a step that follows the end of a run's graph ended."""

    NEXT = "next"  # the next step is released: publish it
    CLOSED = "closed"  # that was the last: the run ended
    STALE = "stale"  # not the run's current step (a late copy): nothing changed


class StepEnd(TextCode):
    """after.lua's argument: how a step ended."""

    OK = "ok"
    FAILED = "failed"


class Wait(TextCode):
    """wait.lua: a worker reached a wait_for() node."""

    SIGNALLED = "signalled"  # the run was signalled: complete the node with the payload
    WAITING = "waiting"  # it waits, no worker holding it
    ENDED = "ended"  # the run is not running


class Signal(TextCode):
    """signal.lua: a signal to a wait_for() node."""

    WOKEN = "woken"  # the node waited: publish it
    KEPT = "kept"  # kept until the run reaches the node
    TAKEN = "taken"  # the wait had its signal already
    ENDED = "ended"  # the run is not running
    GONE = "gone"  # no such run


class ChildMark(TextCode):
    """child.lua: a node started a child run."""

    WAITING = "waiting"  # the node waits for the child
    DONE = "done"  # the node ended already (the child's end completed it)
    NOT_RUNNING = "not_running"  # the run is not running


class NameClaim(TextCode):
    """worker_claim.lua: registering a worker's name."""

    CLAIMED = "claimed"
    LIVE = "live"  # a live worker holds the name


class Beat(TextCode):
    """worker_beat.lua: a heartbeat."""

    OK = "ok"
    TAKEN = "taken"  # another worker holds the name now


# Which scripts mirror which enums (a table of the same name in the script).
MIRRORED: dict[str, tuple[type[Enum], ...]] = {
    "begin": (Begin,),
    "complete": (Stored, Ended),
    "complete_begin": (Fused,),
    "map_arrive": (Stored,),
    "item": (Stored,),
    "finish": (Finish,),
    "revoke": (Revoked,),
    "reclaim": (Verdict, Expiry),
    "task_acquire": (Acquire,),
    "lease": (Mode,),
    "continue": (Continuation,),
    "after": (After, StepEnd),
    "wait": (Wait,),
    "signal": (Signal,),
    "child": (ChildMark,),
    "worker_claim": (NameClaim,),
    "worker_beat": (Beat,),
}


class Begun(NamedTuple):
    """What begin.lua answered."""

    status: str | None  # a Begin, or the final status of the run / None when it is gone
    inputs: bytes | None  # the run inputs (JSON)
    own: bytes | None  # the node's stored result: it ran already
    upstream: list[bytes | None]  # results of the upstream nodes, in the order asked
    attempt: int = 0  # this attempt's number (when the node is called); BUSY: the holder's
    worker: str = ""  # BUSY: the worker of the attempt that holds the node
    lease: float | None = None  # BUSY: when the holder's running lease runs out
    behind: str = ""  # UNRELEASED: an upstream node not finished ("": the node itself)
    # asked for by a watched node only (``trace`` given to Scripts.begin):
    flow: str | None = None  # the run's flow name
    links: dict[str, str] = {}  # predecessor -> its kept trace context (those that have one)
    waited: float | None = None  # RUNNING: seconds in the queue, sent to started (server time)


class Arrival(NamedTuple):
    """What complete.lua answered for one arrival."""

    stored: Stored
    ended: Ended
    publish: list[str]  # successors this arrival released (marked published): publish them
    skipped: list[str]  # successors that will not run (all their arrivals were skips)
    record: dict[str, str] | None = None  # the run record, when this arrival ended the run


@dataclass(frozen=True)
class Reclaim:
    """What reclaim.lua answered: see there."""

    verdict: Verdict
    pending_continuation: bool = False
    poison: tuple[str, int, str] | None = None  # field, times lost, last worker
    now: float = 0.0
    next_running: float | None = None  # the earliest running lease left
    next_queued: float | None = None  # the earliest queued lease left (it may have run out)
    # (field, an Expiry, when it was last published or 0)
    expired: tuple[tuple[str, Expiry, float], ...] = ()
    held: int = 0  # running leases that ran out, extended to the hold instead
    deadline: float | None = None  # QUEUED: the run's deadline (server time), if any
