"""``GET /agents?fields=...``: part of each AGENT, against a real server over real HTTP.

The answer is the whole AGENT with only the keys asked; what is not asked is not
computed (no spec rendered, no /proc read for CPU and RSS); a field that does not exist
is a 400 that lists the ones that do (docs/api.md#get-agents).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from supervisor import manifest as mf
from supervisor import usage
from supervisor.api.agent import AGENT_KEYS, FIELDS, SPEC_KEYS
from tests.integration.test_api import AGENTS, open_api

MANIFEST = f"""
[agents.a]
entry = "{AGENTS}:idle"
[agents.p]
command = ["sleep", "100000"]
liveness = {{ exec = ["true"], period = 60.0 }}
[agents.folder]
path = "folder"
[agents.off]
entry = "{AGENTS}:idle"
enabled = false
"""
READINGS_EQUAL = set(AGENT_KEYS) - {"cpu", "rss", "health"}  # these may move between reads


def write_folder(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "agent.toml").write_text('command = ["sleep", "100001"]\n')


async def test_fields_keep_only_the_keys_asked_as_the_whole_answer_has_them(
    tmp_path: Path,
) -> None:
    write_folder(tmp_path)
    with trio.fail_after(20):
        async with open_api(tmp_path, MANIFEST) as api:
            whole = (await api.http.get("/agents")).json()["agents"]
            assert [set(a) for a in whole] == [set(AGENT_KEYS)] * 4  # the default: all of it
            r = await api.http.get("/agents", params={"fields": "state,id"})
            assert r.status_code == 200
            part = r.json()["agents"]
            assert part == [{"id": a["id"], "state": a["state"]} for a in whole]
            assert [list(a) for a in part] == [["id", "state"]] * 4  # in the AGENT's order
            # Every key asked: the whole answer again.
            every = (await api.http.get("/agents", params={"fields": ",".join(AGENT_KEYS)})).json()
            for got, want in zip(every["agents"], whole, strict=True):
                assert list(got) == list(want)
                assert {k: got[k] for k in READINGS_EQUAL} == {k: want[k] for k in READINGS_EQUAL}
            # Keys of the spec: each as the whole spec renders it (the kind key too), so
            # asking for all of them gives each agent's spec whole.
            spec_fields = ",".join(f"spec.{key}" for key in SPEC_KEYS)
            specs = (await api.http.get("/agents", params={"fields": spec_fields})).json()
            assert specs["agents"] == [{"spec": a["spec"]} for a in whole]
            assert specs["agents"][2]["spec"]["path"] == str(tmp_path / "folder")
            table = (await api.http.get("/agents", params={"fields": "id,spec.enabled"})).json()
            assert [a["spec"] for a in table["agents"]] == [{"enabled": e} for e in [1, 1, 1, 0]]
            # "spec" asked whole wins over some of its keys.
            both = (await api.http.get("/agents/p", params={"fields": "spec,spec.enabled"})).json()
            assert both == {"spec": mf.spec_to_table(api.sup.slots["p"].spec)}
            one = await api.http.get("/agents/p", params={"fields": "id,pid,up"})
            assert one.json() == {"id": "p", "pid": api.sup.slots["p"].pid, "up": True}
            # Repeated, the lists add up.
            twice = await api.http.get("/agents/a?fields=id&fields=kind")
            assert twice.json() == {"id": "a", "kind": "in-process"}


async def test_cpu_and_rss_are_read_only_when_asked(tmp_path: Path) -> None:
    write_folder(tmp_path)
    with trio.fail_after(20):
        async with open_api(tmp_path, MANIFEST) as api:
            for fields in ("id,state,spec", "id,health,last_exit"):
                assert (await api.http.get("/agents", params={"fields": fields})).status_code == 200
            with pytest.raises(LookupError):  # no agent's usage read yet, by anyone
                usage._READINGS.get()
            r = await api.http.get("/agents", params={"fields": "id,rss"})
            assert r.json()["agents"][1]["rss"] > 0  # the sleep's memory
            assert set(usage._READINGS.get().last) == {"a", "p", "folder"}


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ("nope", "'nope'"),
        ("", "''"),
        ("id,", "''"),
        ("id,,state", "''"),
        ("ID", "'ID'"),
        (" id", "' id'"),
        ("spec.nope", "'spec.nope'"),
        ("spec.", "'spec.'"),
        ("health.probe", "'health.probe'"),
        ("x" * 300, repr("x" * 40)),
    ],
)
async def test_a_field_that_does_not_exist_is_a_400_listing_those_that_do(
    tmp_path: Path, fields: str, named: str
) -> None:
    with trio.fail_after(20):
        async with open_api(tmp_path) as api:
            for path in ("/agents", "/agents/a"):
                r = await api.http.get(path, params={"fields": fields})
                assert r.status_code == 400, (path, r.text)
                message = r.json()["error"]
                assert message == f"fields: no field {named}; the fields: {', '.join(FIELDS)}"
                assert "spec.enabled" in message
            missing = await api.http.get("/agents/nope", params={"fields": "id"})
            assert missing.status_code == 404
