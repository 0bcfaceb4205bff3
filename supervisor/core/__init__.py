"""The pure core: decisions with no trio, no I/O and no HTTP.

`plan` (what a reload starts, stops and restarts, in which order), `policy` (restart
decisions and backoff, given ``now``) and `outcome` (how a run ended) are plain functions
and frozen records. Everything here is tested without an event loop; nothing here may
import the shell (`supervisor.owner`, `slot`, `runners`, `api`, `cluster`, trio).
"""
