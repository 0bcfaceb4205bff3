"""The restart policy, pure: given outcomes and times, what next."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.policy import Restart, RestartPolicy, Stop
from supervisor.manifest import Backoff
from supervisor.runners import Outcome

from ..conftest import make_spec

CRASH = Outcome(code=1)
CLEAN = Outcome(code=0)


def policy(**keys: object) -> RestartPolicy:
    keys.setdefault("backoff", Backoff(jitter=0.0))
    return RestartPolicy(make_spec(**keys), rng=random.Random(0))  # type: ignore[arg-type]


def test_on_failure_restarts_failures_only() -> None:
    p = policy()
    assert p.decide(CRASH, ran_for=1, now=10) == Restart(delay=0.5)
    assert p.decide(CLEAN, ran_for=1, now=11) == Stop(failed=False, reason="exited with code 0")


def test_never_ends_exited_or_failed() -> None:
    assert policy(restart="never").decide(CLEAN, ran_for=0, now=0) == Stop(
        failed=False, reason="exited with code 0"
    )
    assert policy(restart="never").decide(CRASH, ran_for=0, now=0) == Stop(
        failed=True, reason="exited with code 1"
    )


def test_always_restarts_success_too() -> None:
    assert isinstance(policy(restart="always").decide(CLEAN, ran_for=0, now=0), Restart)


def test_success_codes() -> None:
    p = policy(success_codes=(0, 3))
    assert p.decide(Outcome(code=3), ran_for=0, now=0) == Stop(
        failed=False, reason="exited with code 3"
    )
    assert isinstance(p.decide(Outcome(signal=15), ran_for=0, now=0), Restart)


def test_errors_and_start_failures_are_failures() -> None:
    p = policy(restart="never")
    assert p.decide(Outcome(error="ValueError: x"), ran_for=0, now=0) == Stop(
        failed=True, reason="ValueError: x"
    )
    assert policy(restart="never").decide(
        Outcome(error="command not found: 'x'", start_failed=True), ran_for=0, now=0
    ) == Stop(failed=True, reason="command not found: 'x'")


def test_backoff_grows_to_max() -> None:
    p = policy(backoff=Backoff(initial=1, factor=2, max=5, jitter=0), max_restarts=100)
    delays = [p.decide(CRASH, ran_for=0, now=t) for t in range(6)]
    assert delays == [Restart(d) for d in (1, 2, 4, 5, 5, 5)]


def test_budget_exhausted_fails() -> None:
    p = policy(max_restarts=2, restart_window=60)
    assert isinstance(p.decide(CRASH, ran_for=0, now=0), Restart)
    assert isinstance(p.decide(CRASH, ran_for=0, now=1), Restart)
    assert p.decide(CRASH, ran_for=0, now=2) == Stop(
        failed=True, reason="exited with code 1; gave up after 2 restarts within 60s"
    )


def test_zero_budget_fails_at_once() -> None:
    assert policy(max_restarts=0).decide(CRASH, ran_for=0, now=0) == Stop(
        failed=True, reason="exited with code 1; gave up after 0 restarts within 60s"
    )


def test_window_forgets_old_restarts() -> None:
    p = policy(max_restarts=2, restart_window=10)
    p.decide(CRASH, ran_for=0, now=0)
    p.decide(CRASH, ran_for=0, now=1)
    assert isinstance(p.decide(CRASH, ran_for=0, now=11), Restart)


def test_healthy_run_resets_backoff_and_budget() -> None:
    p = policy(max_restarts=2, reset_after=30, backoff=Backoff(initial=1, factor=2, jitter=0))
    p.decide(CRASH, ran_for=0, now=0)
    assert p.decide(CRASH, ran_for=0, now=1) == Restart(2)
    assert p.decide(CRASH, ran_for=30, now=31) == Restart(1)
    assert p.streak == 1


@given(
    initial=st.floats(0, 100),
    factor=st.floats(1, 100),
    maximum=st.floats(0, 1000),
    jitter=st.floats(0, 1),
    n=st.integers(1, 10_000),
    seed=st.integers(),
)
def test_delay_within_zero_and_max(
    initial: float, factor: float, maximum: float, jitter: float, n: int, seed: int
) -> None:
    b = Backoff(initial=initial, factor=factor, max=maximum, jitter=jitter)
    p = RestartPolicy(make_spec(backoff=b), rng=random.Random(seed))
    assert 0 <= p.next_delay(n) <= maximum


@given(
    gaps=st.lists(st.floats(0, 100), min_size=1, max_size=50),
    max_restarts=st.integers(0, 10),
    window=st.floats(1, 100),
)
def test_never_more_than_budget_within_any_window(
    gaps: list[float], max_restarts: int, window: float
) -> None:
    """However failures are spaced, no window holds more than max_restarts restarts."""
    p = policy(max_restarts=max_restarts, restart_window=window, reset_after=1e9)
    now, restarts = 0.0, []
    for gap in gaps:
        now += gap
        decision = p.decide(CRASH, ran_for=0, now=now)
        if isinstance(decision, Stop):
            assert sum(1 for t in restarts if t > now - window) == max_restarts
            return
        restarts.append(now)
        assert sum(1 for t in restarts if t > now - window) <= max_restarts


@given(streak=st.integers(1, 20), reset_after=st.floats(0.1, 1000))
def test_long_healthy_run_resets_streak(streak: int, reset_after: float) -> None:
    p = policy(max_restarts=100, reset_after=reset_after, restart_window=1e-9)
    for i in range(streak):
        p.decide(CRASH, ran_for=0, now=float(i))
    p.decide(CRASH, ran_for=reset_after, now=float(streak))
    assert p.streak == 1


def test_a_start_short_of_descriptors_spends_no_budget() -> None:
    """EMFILE at a start is the supervisor's want, not the agent's failure."""
    from supervisor.core.policy import RESOURCE_RETRY

    policy = RestartPolicy(make_spec(restart="always", max_restarts=1), rng=random.Random(0))
    short = Outcome(start_failed=True, error="too many open files", short_of_resources=True)
    for i in range(100):
        assert policy.decide(short, ran_for=0.0, now=float(i)) == Restart(delay=RESOURCE_RETRY)
    assert isinstance(policy.decide(Outcome(code=1), ran_for=0.0, now=200.0), Restart)
