"""A member's lease: kept alive, and the deadline to which it provably lives.

"I hold this key" is true only until the lease's deadline, so a member never asks a
flag whether it may start an agent: it asks its `Lifeline`, which compares its own
monotonic clock with the moment the last answered refresh was *sent* plus half the ttl.
etcd counts a refresh from when it receives it, which is after we sent it, so the lease
lives at least to ``sent + ttl`` by etcd's clock; taking only half of that leaves room
for the member's clock to run slower than etcd's and for the agents to be stopped
before the lease can end (docs/cluster.md, "What the guarantee assumes").

`KeepAlive` refreshes the lease every ttl/6 and moves the lifeline on with each answer.
In a supervisor it runs in a thread with a trio loop and an etcd connection of its own
(`keep_alive_in_thread`), so that spawns, manifest loads or API work in the supervisor's
loop cannot delay a refresh: its deadlines are measured on ``time.monotonic``, the clock
the supervisor's loop reads too before every start.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable

import outcome
import trio

from supervisor.cluster import Refused, Unavailable
from supervisor.cluster.coordinator import Coordinator, Lease
from supervisor.logs import log

Clock = Callable[[], float]
Refresh = Callable[[Lease], Awaitable[float]]

# Starts are allowed until this share of the ttl after the last answered refresh was sent;
# agents must have stopped by STOP_BY of it (see `KeepAlive.run`).
START_WITHIN = 0.5
STOP_BY = 0.9


class Lifeline:
    """Until when this member may start agents, by its own `clock`.

    Thread-safe in the only way it needs to be: one writer (the keep-alive) sets a float,
    readers compare it with the clock.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.until = -math.inf

    def refreshed(self, sent: float, ttl: float) -> None:
        """etcd answered a refresh sent at `sent` (this clock) with `ttl` seconds."""
        self.until = max(self.until, sent + ttl * START_WITHIN)

    def cut(self) -> None:
        """The lease is lost (or about to be): start nothing more."""
        self.until = -math.inf

    def live(self) -> bool:
        """Whether the lease provably lives long enough to start an agent now."""
        return self.clock() < self.until


class KeepAlive:
    """Refresh `lease` every ttl/6 until it is lost, moving `lifeline` on.

    Args:
      refresh: one refresh call (the coordinator's `keepalive`): the new ttl, 0 if gone.
      lease: the lease, granted by a request sent at `sent` (the lifeline's clock).
    """

    def __init__(self, refresh: Refresh, lease: Lease, sent: float, lifeline: Lifeline) -> None:
        self.refresh = refresh
        self.lease = lease
        self.sent = sent
        self.lifeline = lifeline

    async def run(self) -> tuple[float, str]:
        """Keep the lease alive until it is lost; return (stop deadline, why), the deadline
        on the lifeline's clock.

        Failed refreshes are retried every ttl/20; once half the ttl may be left the lease
        counts as lost (the lifeline is cut at that moment, by this task), and the agents
        must have stopped by ``sent + 0.9 * ttl``. Refreshing at ttl/6 (etcd's own clients
        use ttl/3) gives a slow answer a third of the ttl, and a failed one several
        retries, before that point. A lease found gone means others may run our agents
        already: stop at once.
        """
        clock, ttl = self.lifeline.clock, self.lease.ttl
        last = self.sent  # when the last answered refresh was sent
        interval, retry = ttl / 6, ttl / 20
        due = last + interval
        failing = ""
        while True:
            await trio.sleep(max(0.0, due - clock()))
            give_up = last + ttl * START_WITHIN
            sent = clock()
            answer: float | None = None
            if sent < give_up:
                with trio.move_on_after(give_up - sent):
                    try:
                        answer = await self.refresh(self.lease)
                    except (Unavailable, Refused) as exc:
                        failing = failing or str(exc)
            if answer is not None and answer > 0:
                self.lifeline.refreshed(sent, answer)
                if failing:
                    log.info("cluster: lease refreshed again")
                last, due, failing = sent, sent + interval, ""
                ttl = answer
            elif answer == 0:
                self.lifeline.cut()
                return clock(), "the lease expired (this member was out of touch too long)"
            elif clock() >= give_up:
                self.lifeline.cut()
                return last + ttl * STOP_BY, f"cannot refresh the lease ({failing or 'no answer'})"
            else:
                if not failing:
                    failing = "no answer"
                    log.warning("cluster: lease refresh failed; retrying")
                due = sent + retry


async def keep_alive_in_thread(
    connect: Callable[[], Coordinator], lease: Lease, sent: float, lifeline: Lifeline
) -> tuple[float, str]:
    """`KeepAlive.run` in a thread, with a trio loop and a coordinator (`connect()`) of
    its own; the lifeline's clock must be ``time.monotonic``. Cancelling this cancels it
    there and waits for the thread to end."""
    assert lifeline.clock is time.monotonic
    started = threading.Event()
    there: list[tuple[trio.lowlevel.TrioToken, trio.CancelScope]] = []

    async def host() -> tuple[float, str] | None:
        coordinator = connect()
        try:
            with trio.CancelScope() as scope:
                there.append((trio.lowlevel.current_trio_token(), scope))
                started.set()
                return await KeepAlive(coordinator.keepalive, lease, sent, lifeline).run()
            return None
        finally:
            started.set()
            with trio.CancelScope(shield=True):
                await coordinator.aclose()

    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    result: list[outcome.Outcome[tuple[float, str] | None]] = []

    def deliver(value: outcome.Outcome[tuple[float, str] | None]) -> None:
        result.append(value)
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            pass

    trio.lowlevel.start_thread_soon(
        lambda: trio.run(host), deliver, name=f"keep-alive {lease.id:x}"
    )
    try:
        await done.wait()
    finally:
        if not done.is_set():  # cancelled here: cancel it there, and wait for the thread
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(started.wait)
                for their_token, scope in there:
                    try:
                        their_token.run_sync_soon(scope.cancel)
                    except trio.RunFinishedError:
                        pass
                await done.wait()
    answer = result[0].unwrap()
    assert answer is not None, "keep-alive cancelled from its own thread"
    return answer
