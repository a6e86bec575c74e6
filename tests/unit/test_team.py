"""Invites, joins and the registry of joined nodes (team.py), on a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.auth import Caller
from scheduler.errors import DaemonError
from scheduler.join import NEW_NODE_S, rejoin_reason
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


def raw(node_id: str, addr: str, head: bool = False) -> dict[str, object]:
    """A node as Ray lists it (its host name is its id here)."""
    res = {"GPU": 2.0, "CPU": 4.0, **({"node:__internal_head__": 1.0} if head else {})}
    return {"NodeID": node_id, "NodeManagerHostname": node_id, "NodeManagerAddress": addr, "Resources": res}


def on_box(node_id: str) -> dict[str, object]:
    """The machine "box" (10.0.0.2) as Ray lists it under `node_id`: one Ray node id per
    Ray start, so a reboot shows the same machine under a new id."""
    return {"NodeID": node_id, "NodeManagerHostname": "box", "NodeManagerAddress": "10.0.0.2", "Resources": {"GPU": 2.0}}


def test_ray_nodes_that_did_not_join_are_untrusted_and_unschedulable(team: Team) -> None:
    inv = team.invite(ROOT, 900)
    team.join(inv["secret"], "box-2", "10.0.0.2")
    book = NodeBook()
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
    # A node that declares Ray's head resource is not the head for it (`ray start
    # --resources '{"node:__internal_head__": 1}'` is anyone's to type).
    book.update_from_ray(
        [raw("head", "10.0.0.1", head=True), raw("fake", "10.0.0.9", head=True)],
        "10.0.0.1", False, team.trusted_addresses(), head_id="head",
    )  # fmt: skip
    assert {n.name: n.trusted for n in book.all()} == {"head": True, "fake": False}
    book.update_from_ray([raw("fake", "10.0.0.9", head=True)], "10.0.0.1", False, team.trusted_addresses())
    assert not book.get("fake").trusted  # type: ignore[union-attr]


def test_node_remove_is_for_admins_and_the_machine_is_untrusted_at_the_next_look(team: Team) -> None:
    inv = team.invite(ROOT, 900)
    team.join(inv["secret"], "box-2", "10.0.0.2")
    book = NodeBook()
    ray_nodes = [raw("head", "10.0.0.1", head=True), raw("box-2", "10.0.0.2")]
    book.update_from_ray(ray_nodes, "10.0.0.1", False, team.trusted_addresses())
    assert book.get("box-2").schedulable  # type: ignore[union-attr]
    for caller, name, status in ((ALICE, "box-2", 403), (ROOT, "box-9", 404)):
        with pytest.raises(DaemonError) as e:
            team.leave(caller, name)
        assert e.value.status == status
    assert team.leave(ROOT, "box-2") == {"node": "box-2", "removed": True}
    assert team.registry() == {} and team.trusted_addresses() == set()
    # Its Ray node is still there (it keeps Ray's token): untrusted from the next look on.
    book.update_from_ray(ray_nodes, "10.0.0.1", False, team.trusted_addresses())
    box = book.get("box-2")
    assert box is not None and not box.trusted and not box.schedulable
    assert ("node remove", "box-2") in [(a["action"], a["target"]) for a in team.store.audit_log()]


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

    book.update_from_ray([on_box("old")], "10.0.0.1", False)
    book.mark_dead("old")  # cut off past node_timeout_s; Ray still lists it
    book.update_from_ray([on_box("old")], "10.0.0.1", False)
    assert book.lost_addresses() == {"10.0.0.2"}
    book.update_from_ray([on_box("old"), on_box("new")], "10.0.0.1", False)  # its Ray restarted
    assert book.lost_addresses() == set()
    # The new node has the machine's name while Ray still lists the old one too.
    assert [(n.id, n.name) for n in book.all()] == [("new", "box")]
    _, removed = book.update_from_ray([on_box("new")], "10.0.0.1", False)
    assert [(n.id, n.name) for n in removed] == [("old", "box")]
    # Two live nodes of one host name (two Rays on one machine) are told apart.
    book.update_from_ray([on_box("new"), on_box("other")], "10.0.0.1", False)
    assert sorted(n.name for n in book.all()) == ["box-new", "box-other"]


def test_a_rogue_node_calling_itself_after_a_joined_machine_takes_neither_its_name_nor_its_drain() -> None:
    book = NodeBook()
    box = {"NodeID": "aaaaaaaa", "NodeManagerHostname": "box", "NodeManagerAddress": "10.0.0.2", "Resources": {"GPU": 2.0}}
    rogue = {**box, "NodeID": "bbbbbbbb", "NodeManagerAddress": "10.0.0.9"}
    book.update_from_ray([box], "10.0.0.1", False, trusted={"10.0.0.2"})
    book.set_drained("box", True)
    book.update_from_ray([box, rogue], "10.0.0.1", False, trusted={"10.0.0.2"})
    got = {n.id: (n.name, n.trusted, n.schedulable) for n in book.all()}
    assert got == {"aaaaaaaa": ("box", True, False), "bbbbbbbb": ("box-bbbbbb", False, False)}
    # Alone, an untrusted node keeps its own name (the admin sees what it calls itself).
    book.update_from_ray([rogue], "10.0.0.1", False, trusted={"10.0.0.2"})
    assert [n.name for n in book.all()] == ["box"]


def test_a_drain_holds_on_a_machine_whichever_of_its_names_it_goes_by() -> None:
    book = NodeBook()

    def schedulable() -> dict[str, tuple[str, bool]]:
        return {n.id: (n.name, n.schedulable) for n in book.all()}

    # Drained by its host name, it reboots while Ray still lists its old node: both
    # nodes are suffixed, and neither takes jobs.
    book.update_from_ray([on_box("old111")], "10.0.0.1", False)
    book.set_drained("box", True)
    book.update_from_ray([on_box("old111"), on_box("new222")], "10.0.0.1", False)
    assert schedulable() == {"old111": ("box-old111", False), "new222": ("box-new222", False)}
    book.set_drained("box", False)
    assert schedulable() == {"old111": ("box-old111", True), "new222": ("box-new222", True)}
    # Drained by its suffixed name: still drained once its sibling is gone and it is
    # plain "box" again; the sibling's drain does not spill onto it.
    book.set_drained("box-new222", True)
    assert schedulable() == {"old111": ("box-old111", True), "new222": ("box-new222", False)}
    book.update_from_ray([on_box("new222")], "10.0.0.1", False)
    assert schedulable() == {"new222": ("box", False)}
    book.set_drained("box-new222", False)
    assert schedulable() == {"new222": ("box", True)}


def test_a_worker_restarts_its_ray_for_a_new_head_or_as_a_lost_nodes_ghost_but_not_when_new(team: Team) -> None:
    # Found in test_team: a rebooted machine's new Ray node asked the head before the head
    # had listed it, was told "lost" (its old node, still in Ray's list), stopped, and left
    # a draining node that a job over two nodes was placed on for 60 s.
    answer = team.epoch("10.0.0.2", {"10.0.0.2"}, 10.0)
    assert answer["lost"] and answer["node_timeout_s"] == 10.0
    epoch = str(answer["epoch"])
    assert rejoin_reason(epoch, answer, up_s=3.0) == ""  # the new node: not yet listed
    assert rejoin_reason(epoch, answer, up_s=10.0) == "the head took this node for lost"
    assert rejoin_reason(epoch, team.epoch("10.0.0.2", set(), 10.0), up_s=600.0) == ""
    assert rejoin_reason("another head", answer, up_s=1.0) == "the head restarted"
    # An older head does not say node_timeout_s: as before, "lost" is acted on at once.
    assert rejoin_reason(epoch, {"epoch": epoch, "lost": True}, up_s=0.5) == "the head took this node for lost"
    # A long node_timeout_s keeps a machine out no longer than NEW_NODE_S (its node may be
    # taken for lost because Ray said it died, not only for its silence).
    long = {**answer, "node_timeout_s": 3600.0}
    assert rejoin_reason(epoch, long, up_s=NEW_NODE_S - 1) == ""
    assert rejoin_reason(epoch, long, up_s=NEW_NODE_S) == "the head took this node for lost"
    assert rejoin_reason(epoch, {**answer, "node_timeout_s": "soon"}, up_s=0.5) == "the head took this node for lost"


def test_refused_joins_are_audited_once_a_minute_per_address_and_no_name_is_taken_over(team: Team) -> None:
    bad = "lqjoin_00000000_" + "A" * 43
    for i in range(500):
        with pytest.raises(DaemonError, match="not valid"):
            team.join(bad, f"box-{i}", "10.0.0.66", now=1000.0 + i * 0.01)
    with pytest.raises(DaemonError):
        team.join(bad, "box-x", "10.0.0.66", now=1061.0)
    refused = [a for a in team.store.audit_log() if a["action"] == "node join refused"]
    assert len(refused) == 2 and "499 more" in refused[0]["detail"]
    inv = team.invite(ROOT, 900)
    team.join(inv["secret"], "box-2", "10.0.0.2")
    other = team.invite(ROOT, 900)
    with pytest.raises(DaemonError, match="already joined from 10.0.0.2"):
        team.join(other["secret"], "box-2", "10.0.0.99")
    assert team.registry()["box-2"]["address"] == "10.0.0.2"


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="chowns to another user")
def test_join_keeps_the_ray_token_out_of_a_state_dir_someone_else_controls(tmp_path: Path) -> None:
    import os

    from scheduler.join import JoinError, prepare_state, save

    os.chmod(tmp_path, 0o755)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(JoinError, match="belongs to"):
        prepare_state(theirs)
    ours = tmp_path / "ours"
    prepare_state(ours)
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (ours / "ray-token").symlink_to(victim)  # left there while the dir was open, say
    save(ours, {"ray_token": "secret", "ray_address": "10.0.0.1:6379", "name": "w"}, "https://h:7450", "ab" * 32)
    assert victim.read_text() == "keep\n"
    token = ours / "ray-token"
    assert not token.is_symlink() and token.read_text() == "secret" and token.stat().st_mode & 0o777 == 0o600
    assert (ours / "ray").stat().st_mode & 0o777 == 0o700


def test_a_full_listener_makes_room_by_pushing_out_tokenless_connections_of_the_busiest_address() -> None:
    import socket

    from scheduler.conns import Limits

    limits = Limits(per_key=64, total=4)
    pairs = [socket.socketpair() for _ in range(6)]
    try:
        # An attacker from two addresses fills the listener with tokenless connections.
        for (a, _), key in zip(pairs[:4], ["10.0.0.66", "10.0.0.66", "10.0.0.66", "10.0.0.67"], strict=True):
            assert limits.acquire(f"address {key}", a, anon=True) == ""
        assert limits.acquire("address 10.0.0.2", pairs[4][0], anon=True) == ""  # a worker still gets in
        assert limits.open() == 4 and limits.open("address 10.0.0.66") == 2
        pairs[0][1].settimeout(1)
        assert pairs[0][1].recv(1) == b""  # the oldest of the busiest address was closed
        limits.move("address 10.0.0.2", "user alice", pairs[4][0])
        assert limits.acquire("user bob", pairs[5][0]) == ""  # room again, at another anon's expense
        assert limits.open("user alice") == 1 and limits.open() == 4
    finally:
        for a, b in pairs:
            a.close()
            b.close()
