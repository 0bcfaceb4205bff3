"""Restart decisions and backoff: pure, no trio, no I/O. Time is given as ``now``.

The rules (docs/agents.md, "Restarts and backoff"):

- ``restart = "never"`` never restarts; ``"on-failure"`` restarts a run that failed;
  ``"always"`` restarts every run. A run succeeded when it exited with one of
  ``success_codes`` (an async function that returned counts as 0) and no signal or error.
- Restart n waits ``min(max, initial * factor**(n-1))``, ± ``jitter`` of that, never more
  than ``max`` and never less than 0. n counts restarts since the agent last ran healthy
  for ``reset_after`` seconds; such a run also forgives earlier restarts in the window.
- At most ``max_restarts`` restarts within any ``restart_window`` seconds: the next one
  would exceed that budget, so the agent is given up as failed instead.
- An agent that is not restarted ends ``exited`` after a success, ``failed`` otherwise.
"""

from __future__ import annotations

import random

import attrs

from supervisor.core.outcome import Outcome
from supervisor.manifest import AgentSpec


@attrs.frozen
class Restart:
    """Start the agent again after `delay` seconds."""

    delay: float


@attrs.frozen
class Stop:
    """Do not restart. `failed` says whether the agent ends ``failed`` or ``exited``."""

    failed: bool
    reason: str


Decision = Restart | Stop


def succeeded(spec: AgentSpec, outcome: Outcome) -> bool:
    """Whether a run ended well: an exit code in `success_codes`, no signal, no error."""
    return (
        outcome.signal is None
        and outcome.error is None
        and not outcome.start_failed
        and outcome.code in spec.success_codes
    )


def describe(outcome: Outcome) -> str:
    """A short human text for how a run ended."""
    if outcome.error is not None:
        return outcome.error
    if outcome.signal is not None:
        return f"killed by signal {outcome.signal}"
    return f"exited with code {outcome.code}"


RESOURCE_RETRY = 1.0  # seconds before retrying a start that failed for want of descriptors

# One generator for every policy: a `random.Random` holds 2.5 KiB of state, which
# 10,000 slots should not each pay for.
_SHARED_RNG = random.Random()


class RestartPolicy:
    """What to do each time one agent's run ends. One instance per slot, never shared.

    Args:
      spec: the agent; its restart keys are read once.
      rng: source of jitter; pass a seeded `random.Random` for repeatable tests.
    """

    def __init__(self, spec: AgentSpec, rng: random.Random | None = None) -> None:
        self._spec = spec
        self._rng = rng or _SHARED_RNG
        self._streak = 0  # restarts since the last healthy run: the backoff exponent
        # Times of restarts within the window, oldest first. A list, not a deque: it
        # holds at most max_restarts stamps, and an empty list costs a tenth of a deque.
        self._stamps: list[float] = []

    @property
    def streak(self) -> int:
        return self._streak

    def decide(self, outcome: Outcome, *, ran_for: float, now: float) -> Decision:
        """Decide after a run that ended at `now`, having run healthy for `ran_for` s.

        `ran_for` is the time the agent was running (ready); 0 if it never got there.
        """
        spec = self._spec
        if ran_for >= spec.reset_after:
            self._streak = 0
            self._stamps.clear()
        if outcome.short_of_resources:  # the supervisor's want, not the agent's failure:
            return Restart(delay=RESOURCE_RETRY)  # retried, its budget not spent
        ok = succeeded(spec, outcome)
        if spec.restart == "never" or (spec.restart == "on-failure" and ok):
            return Stop(failed=not ok, reason=describe(outcome))
        horizon = now - spec.restart_window
        self._stamps = [t for t in self._stamps if t > horizon]
        if len(self._stamps) >= spec.max_restarts:
            return Stop(
                failed=True,
                reason=(
                    f"{describe(outcome)}; gave up after {len(self._stamps)} restarts "
                    f"within {spec.restart_window:g}s"
                ),
            )
        self._stamps.append(now)
        self._streak += 1
        return Restart(delay=self.next_delay(self._streak))

    def next_delay(self, n: int) -> float:
        """The delay before restart `n` (1-based), jitter included, within [0, max]."""
        b = self._spec.backoff
        try:
            base = min(b.max, b.initial * b.factor ** (n - 1))
        except OverflowError:  # a large factor**n: far past `max` anyway
            base = b.max
        jittered = base * (1.0 + self._rng.uniform(-b.jitter, b.jitter))
        return min(b.max, max(0.0, jittered))
