"""Invites, joins and the registry of joined nodes (team.py), on a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.auth import Caller
from scheduler.errors import DaemonError
from scheduler.nodes import NodeBook
from scheduler.store import Store
from scheduler.team import HeadInfo, Team

ROOT = Caller(0, "root", True)
REMOTE_ADMIN = Caller(0, "root", True, via="token abc")
ALICE = Caller(1001, "alice", False)


@pytest.fixture
def team(tmp_path: Path) -> Team:
    token = tmp_path / "ray-token"
    token.write_text("raytoken\n")
    head = HeadInfo("10.0.0.1:6379", str(token), "https://10.0.0.1:7450", "ab" * 32)
    return Team(Store(tmp_path / "labq.db"), enforced=True, head=lambda: head)


def test_an_invite_is_for_admins_on_the_head_used_once_and_expires(team: Team) -> None:
    for caller in (ALICE, REMOTE_ADMIN):
        with pytest.raises(DaemonError):
            team.invite(caller, 900)
    inv = team.invite(ROOT, 900, now=1000.0)
    assert inv["command"] == f"labq join https://10.0.0.1:7450 --secret {inv['secret']} --cert-sha256 {'ab' * 32}"
    assert inv["secret"] not in team.store.get_meta("join_invites")  # only its hash is kept
    got = team.join(inv["secret"], "box-2", "10.0.0.2", now=1001.0)
    assert got == {"name": "box-2", "ray_address": "10.0.0.1:6379", "ray_token": "raytoken"}
    with pytest.raises(DaemonError, match="not valid"):
        team.join(inv["secret"], "box-3", "10.0.0.3", now=1002.0)  # spent
    late = team.invite(ROOT, 60, now=1000.0)
    with pytest.raises(DaemonError, match="not valid"):
        team.join(late["secret"], "box-4", "10.0.0.4", now=1061.0)  # expired
    with pytest.raises(DaemonError, match="not valid"):
        team.join(late["secret"][:-1] + "x", "box-4", "10.0.0.4", now=1001.0)  # wrong secret
    with pytest.raises(DaemonError, match="host name"):
        team.join(late["secret"], "bad name\n", "10.0.0.4", now=1001.0)
    assert set(team.registry()) == {"box-2"} and team.trusted_addresses() == {"10.0.0.2"}
    actions = [(a["action"], a["target"]) for a in team.store.audit_log()]
    assert ("node join", "box-2") in actions and actions.count(("node join refused", "box-3")) == 1


def test_without_a_team_head_every_node_is_trusted_and_nobody_joins(tmp_path: Path) -> None:
    team = Team(Store(tmp_path / "labq.db"), enforced=False, head=lambda: None)
    assert team.trusted_addresses() is None and team.missing([]) == []
    with pytest.raises(DaemonError, match="--advertise"):
        team.invite(ROOT, 900)


def test_ray_nodes_that_did_not_join_are_untrusted_and_unschedulable(team: Team) -> None:
    inv = team.invite(ROOT, 900)
    team.join(inv["secret"], "box-2", "10.0.0.2")
    book = NodeBook()

    def raw(node_id: str, addr: str, head: bool = False) -> dict[str, object]:
        res = {"GPU": 2.0, "CPU": 4.0, **({"node:__internal_head__": 1.0} if head else {})}
        return {"NodeID": node_id, "NodeManagerHostname": node_id, "NodeManagerAddress": addr, "Resources": res}

    added, removed = book.update_from_ray(
        [raw("head", "10.0.0.1", head=True), raw("box-2", "10.0.0.2"), raw("rogue", "10.0.0.9")],
        "10.0.0.1", False, team.trusted_addresses(),
    )  # fmt: skip
    assert {n.name for n in added} == {"head", "box-2", "rogue"} and not removed
    state = {n.name: (n.trusted, n.schedulable) for n in book.all()}
    assert state == {"head": (True, True), "box-2": (True, True), "rogue": (False, False)}
    book.set_drained("rogue", False)  # resuming a drain does not make it trusted
    assert not book.get("rogue").schedulable  # type: ignore[union-attr]
    team.membership(added, removed)
    assert any(a["action"] == "node up untrusted" for a in team.store.audit_log())
    assert team.missing(book.all()) == []
    _, removed = book.update_from_ray([raw("head", "10.0.0.1", head=True)], "10.0.0.1", False, team.trusted_addresses())
    assert {n.name for n in removed} == {"box-2", "rogue"}
    assert team.missing(book.all()) == ["box-2 (10.0.0.2)"]


def test_the_ui_marks_an_untrusted_node() -> None:
    from tui.model import Data, gpu_rows

    node = {"id": "n1", "name": "rogue", "simulated": True, "alive": True, "schedulable": False, "trusted": False,
            "gpus": 2, "gpus_used": 0, "gpu_list": []}  # fmt: skip
    rows = gpu_rows(Data(nodes=[node]), 0.0)
    assert any("UNTRUSTED" in cell for cell in rows[0][1])
    rows = gpu_rows(Data(nodes=[{**node, "trusted": True}]), 0.0)
    assert any(cell == "drained" for cell in rows[0][1])


def test_a_report_blocked_past_the_head_timeout_kills_the_job_once() -> None:
    import threading

    from scheduler.headguard import MARGIN_S, HeadGuard

    now = [0.0]
    killed: list[float] = []
    guard = HeadGuard(lambda: killed.append(now[0]), timeout=60, clock=lambda: now[0])
    blocked, release = threading.Event(), threading.Event()

    def stuck_report(*_: object) -> None:
        blocked.set()
        release.wait(10)

    report = guard.wrap(stuck_report)
    t = threading.Thread(target=report, args=(None, 0, b"", None, []))
    t.start()
    blocked.wait(5)
    now[0] = 60 + MARGIN_S - 1
    assert not guard.check() and not killed  # slow, not gone
    now[0] = 60 + MARGIN_S + 1
    assert guard.check() and guard.check() and killed == [now[0]]  # once
    release.set()
    t.join(5)
    ok = guard.wrap(lambda *_: {"fine": True})
    assert ok(None, 0, b"", {"outcome": "succeeded"}, []) == {"fine": True}
    guard.close()


def test_a_machine_is_asked_to_rejoin_only_while_its_old_node_alone_is_listed() -> None:
    book = NodeBook()

    def raw(node_id: str) -> dict[str, object]:
        return {"NodeID": node_id, "NodeManagerHostname": "box", "NodeManagerAddress": "10.0.0.2",
                "Resources": {"GPU": 2.0}}  # fmt: skip

    book.update_from_ray([raw("old")], "10.0.0.1", False)
    book.mark_dead("old")  # cut off past node_timeout_s; Ray still lists it
    book.update_from_ray([raw("old")], "10.0.0.1", False)
    assert book.lost_addresses() == {"10.0.0.2"}
    book.update_from_ray([raw("old"), raw("new")], "10.0.0.1", False)  # its Ray restarted
    assert book.lost_addresses() == set()
