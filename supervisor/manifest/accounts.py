"""`user` and `group`: names this machine must know, checked when the manifest is read."""

from __future__ import annotations

import grp
import pwd
from collections.abc import Callable
from typing import Any

from supervisor.manifest.convert import show


def account_problems(values: dict[str, Any], where: Callable[[], str]) -> list[tuple[str, str]]:
    """(TOML path, message) for a `user` or `group` unknown here (names or numbers)."""
    found = []
    if values.get("user"):
        found += _problem("user", values["user"], pwd.getpwnam, pwd.getpwuid, where)
    if values.get("group"):
        found += _problem("group", values["group"], grp.getgrnam, grp.getgrgid, where)
    return found


def _problem(
    key: str,
    name: str,
    by_name: Callable[[str], object],
    by_id: Callable[[int], object],
    where: Callable[[], str],
) -> list[tuple[str, str]]:
    try:
        by_id(int(name)) if name.isdigit() else by_name(name)
    except (KeyError, OverflowError):
        return [(f"{where()}.{key}", f"unknown {key} {show(name)} on this machine")]
    return []
