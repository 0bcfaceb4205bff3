"""What the A/B scripts share (`start_ab`, `crash_ab`): revisions of ours set up as the
full benchmark launches them, and rounds that alternate their order."""

from __future__ import annotations

from collections.abc import Iterator

import peers


def revisions(
    revs: list[str], python: str, backoff_initial: float | None, prefix: str
) -> dict[str, peers.Peer]:
    """Each of `revs` set up, by name: a git revision of ours (``wt``: the work tree as it
    is), or ``minimal``, the minimal respawner. Raises `peers.Unavailable`."""
    launched: dict[str, peers.Peer] = {}
    for i, rev in enumerate(revs):
        peer: peers.Peer
        if rev == "minimal":
            peer = peers.Minimal()
        else:
            peer = peers.Ours(python, backoff_initial, "" if rev == "wt" else rev)
        peer.name = f"{prefix}-{i}"
        try:
            peer.setup()
        except peers.Unavailable as e:
            raise peers.Unavailable(f"{rev}: {e}") from e
        launched[rev] = peer
    return launched


def alternating(revs: list[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, revision) for `rounds` rounds, the order of `revs` reversed every other
    round: a machine that slows down during a run slows every revision alike."""
    for i in range(rounds):
        for rev in revs if i % 2 == 0 else revs[::-1]:
            yield i, rev
