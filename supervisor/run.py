"""`supervisor run`: wire the owner, signals, the API and ``--watch`` into one trio run."""

from __future__ import annotations

import supervisor.lazyimports  # noqa: F401  # isort: skip  (first: what it keeps unloaded)
import gc
import os
import resource
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio

try:  # trio.testing's, without importing trio.testing (0.1 s); a trio that moved it still works
    from trio._core._generated_run import wait_all_tasks_blocked
except ImportError:  # pragma: no cover
    from trio.testing import wait_all_tasks_blocked

from supervisor import logs
from supervisor import manifest as mf
from supervisor.api.access import ApiConfigError
from supervisor.api.serve import BoundApi, bind_api, serve_bound
from supervisor.keeper import Keeper
from supervisor.logs import log
from supervisor.owner import Supervisor
from supervisor.runners.containment import LEADERS, Containment
from supervisor.runners.dispatch import make_runner
from supervisor.runners.orphans import kill_strays
from supervisor.signals import handle_signals, is_pid1

if TYPE_CHECKING:
    from supervisor.cluster import Joining
    from supervisor.cluster.member import ClusterMember
    from supervisor.placement import Placement

EXIT_OK, EXIT_INVALID, EXIT_CRITICAL = 0, 2, 3
API_AFTER = 1.0  # seconds the API waits at most for the first agents' spawns
TERMINATION_LOG = Path("/dev/termination-log")


def run_main(
    path: Path,
    *,
    api: str | None = None,
    watch: bool = False,
    log_format: logs.LogFormat = "text",
    log_level: str = "INFO",
    cluster: str | None = None,
    member: str | None = None,
    etcd_access: Mapping[str, str] | None = None,
) -> int:
    """Run the supervisor in the foreground until it is stopped; return the exit code.

    `cluster` and `member` override the manifest's (``--cluster``, ``--member``), and so
    do the keys of `etcd_access` (``--etcd-ca`` ...: `supervisor.cluster.ACCESS_KEYS`).
    """
    logs.setup(log_format, log_level)
    try:
        try:
            m = mf.load(path)
        except mf.ManifestError as exc:
            for line in exc.errors:
                print(line, file=sys.stderr)
            log.error("invalid manifest %s: nothing started", path)
            return EXIT_INVALID
        _raise_fd_limit()
        # Thousands of slots are thousands of long-lived objects that every collection of
        # the oldest generation walks again: with the default thresholds that cost ~0.6 s
        # of a 10,000-agent start and most of a 10 % reload (docs/performance.md). Collect
        # the young generation less often and the old one far less often.
        gc.set_threshold(50_000, 20, 100)
        address = m.settings.api if api is None else api
        try:
            join = _joining(m.settings, cluster, member, etcd_access)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return EXIT_INVALID
        try:
            # Bound before any agent starts (a bad address starts nothing), served once
            # they are (`_after_start`).
            bound = bind_api(m.settings, address) if address else None
        except ApiConfigError as exc:
            print(f"cannot serve the API: {exc}", file=sys.stderr)
            log.error("the API could not start: stopped")
            return EXIT_INVALID
        try:
            return trio.run(
                _main,
                m,
                bound,
                _watch_baseline(m) if watch else None,
                join,
                instruments=[logs.LoopFlush()],
            )
        finally:
            if bound is not None:
                bound.close()  # (when it was never served)
    finally:
        gc.enable()  # however it ends (`cmd_run` turned it off)
        logs.shutdown()


async def _main(
    m: mf.Manifest, api: BoundApi | None, watch: str | None, join: Joining | None
) -> int:
    """Run everything; `watch` is the ``--watch`` baseline (None: no ``--watch``)."""
    # As PID 1 the kernel kills the whole PID namespace when we die: no keeper needed.
    keeper = None if is_pid1() else _start_keeper()
    containment = Containment.setup()
    log.info("containment: %s", containment.describe())
    cluster = None if join is None else _member(join)
    placement = None if cluster is None else _placement(cluster)
    sup = Supervisor(m, make_runner(keeper, containment), placement)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(handle_signals, reap=True),  # a subreaper's orphans, or PID 1's
                sup.request_reload,
                partial(_stop_gracefully, sup, keeper),
                sup.kill_all,
                lambda: LEADERS,  # every agent leader until its runner reaped it
            )
            nursery.start_soon(_after_start, sup, api, cluster)
            if cluster is not None:  # cancelled after sup.run(): agents stop, then it leaves
                await nursery.start(cluster.run, sup.request_reconcile, sup.fence)
            if watch is not None:
                from supervisor.watch import watch_manifest  # watchfiles: only with --watch

                await nursery.start(
                    partial(
                        watch_manifest,
                        lambda: sup.manifest,
                        lambda: [s.spec.path for s in sup.slots.values() if s.spec.path],
                        lambda: sup.request_reload().wait(),
                        applied=watch,
                    )
                )
            log.info("supervisor %d: %d agents from %s", os.getpid(), len(m.agents), m.path)
            code = await sup.run()
            nursery.cancel_scope.cancel()
    finally:
        # Orphans no agent's run could claim (they left its group and cleared their
        # environment): nothing of ours outlives us.
        kill_strays(set() if keeper is None else {keeper.pid}, LEADERS)
        if keeper is not None:
            keeper.quit()  # it reads its last lines while the cgroups are removed
        containment.close()
        if keeper is not None:
            keeper.close()
    if sup.exit_message:
        print(sup.exit_message, flush=True)
        _write_termination_log(sup.exit_message)
    log.info("stopped (exit %d)", code)
    return code


def _stop_gracefully(sup: Supervisor, keeper: Keeper | None) -> None:
    """The first SIGTERM: the stop wave begins; the keeper is told `q` at its end and
    needs no unregistration meanwhile (`Keeper.quiet`)."""
    if keeper is not None:
        keeper.quiet()
    sup.request_shutdown()


async def _after_start(
    sup: Supervisor, api: BoundApi | None, cluster: ClusterMember | None
) -> None:
    """Once the first agents are spawned, collect cyclic garbage again (off since the
    start: `supervisor.cli.local.cmd_run`), then serve the API: importing the HTTP stack
    takes ~0.1 s of loop time, which the agents' start does not wait for
    (docs/performance.md#what-limits-ours). "Spawned" is: no task is runnable any more,
    or `API_AFTER` seconds passed (agents that never let the loop idle)."""
    with trio.move_on_after(API_AFTER):
        await wait_all_tasks_blocked()
    # What the start made (modules, the manifest, the slots) lives on: it goes to the
    # oldest generation at once (two list splices), not through a first young collection
    # that would walk all of it (~0.15 s at 10,000 agents). Cycles in it are still found,
    # by the collections of the oldest generation.
    gc.freeze()
    gc.unfreeze()
    gc.enable()
    if api is not None:
        await serve_bound(sup, api, cluster)


def _watch_baseline(m: mf.Manifest) -> str:
    """What `m` was loaded from, taken right after loading it: a write landing before
    ``--watch`` is armed then differs from it, and is applied."""
    from supervisor.watch import fingerprint  # watchfiles: only with --watch

    return fingerprint(m, [spec.path for spec in m.agents.values() if spec.path is not None])


def _write_termination_log(message: str) -> None:
    """Kubernetes' termination message (docs/operations.md): written only if the file
    exists, never created."""
    if TERMINATION_LOG.exists():
        try:
            TERMINATION_LOG.write_text(message + "\n")
        except OSError:
            pass  # not writable: stdout has it


def _joining(
    settings: mf.Settings,
    cluster: str | None,
    member: str | None,
    etcd_access: Mapping[str, str] | None,
) -> Joining | None:
    """`supervisor.cluster.joining`, imported only for a cluster (its models are built at
    import: time before the first spawn that running alone need not pay)."""
    if not (settings.cluster if cluster is None else cluster):
        return None
    from supervisor.cluster import joining

    return joining(settings, cluster, member, etcd_access)


def _member(join: Joining) -> ClusterMember:
    from supervisor.cluster.member import ClusterMember  # an HTTP client: only when needed

    return ClusterMember.connect(join)


def _placement(cluster: ClusterMember) -> Placement:
    from supervisor.cluster.placement import ClusterPlacement

    return ClusterPlacement(cluster)


def _start_keeper() -> Keeper | None:
    try:
        return Keeper.start()
    except (OSError, ValueError) as exc:
        log.warning("no keeper (%s): agents may outlive a SIGKILLed supervisor", exc)
        return None


def _raise_fd_limit() -> None:
    """Each process agent holds a few fds (pipes, pidfd): lift the soft limit to the hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
