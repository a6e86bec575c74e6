"""No shared filesystem (issue 14, part 4): which nodes have a job's directory (the
book the GPU thread keeps, what a node agent answers as root for another user), and
the daemon placing a job only where its directory is, with the reason when nowhere."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from scheduler import safefs
from scheduler.agent import has_dirs
from scheduler.dirbook import DirBook
from scheduler.launcher import MemoryLauncher
from scheduler.shapes import JobState
from tests.conftest import unix_user
from tests.unit.test_control import ALICE, SPEC, node, open_daemon

K = (1001, "alice", "/data/proj")


def test_the_book_knows_nothing_until_every_alive_node_answered_unless_one_has_it() -> None:
    b = DirBook(recheck_s=30)
    assert b.want([K], ["n1", "n2"]) is True  # never asked: look now
    assert b.where(K, ["n1", "n2"]) is None
    assert b.due(["n1", "n2"], 0.0) == {"n1": [K], "n2": [K]}
    assert b.record("n1", [K], [False], 0.0)
    assert b.where(K, ["n1", "n2"]) is None  # n2 has not said yet
    assert b.record("n2", [K], [True], 0.0)
    assert b.where(K, ["n1", "n2"]) == frozenset({"n2"})
    assert b.want([K], ["n1", "n2"]) is False
    assert b.due(["n1", "n2"], 10.0) == {}  # answered lately
    # Asked again after recheck_s: made on n1 meanwhile; n2 went away.
    assert b.due(["n1", "n2"], 31.0) == {"n1": [K], "n2": [K]}
    b.record("n1", [K], [True], 31.0)
    assert b.where(K, ["n1"]) == frozenset({"n1"})
    # A new node: asked at once; until it answers, what is known stands.
    assert b.want([K], ["n1", "n3"]) is True
    assert b.where(K, ["n1", "n3"]) == frozenset({"n1"})
    # Nobody has it, every node said so: nowhere (not unknown).
    k2 = (1001, "alice", "/nowhere")
    b.want([K, k2], ["n1"])
    b.record("n1", [k2], [False], 32.0)
    assert b.where(k2, ["n1"]) == frozenset()
    # What no job needs any more is forgotten.
    b.want([k2], ["n1"])
    b.due(["n1"], 33.0)
    assert b.where(K, ["n1"]) is None


def test_an_agent_says_only_what_the_user_could_find_out() -> None:
    uid = unix_user("labqtest-dirs")
    # safefs remembers accounts for a minute: an earlier test may have asked about this
    # uid (ALICE is 1001) before the account existed.
    safefs._GROUPS.pop(uid, None)
    # Not under pytest's tmp_path: that is in root's private /tmp/pytest-of-root.
    tmp_path = Path(tempfile.mkdtemp(prefix="lqdirs-", dir="/tmp"))
    try:
        _agent_answers(uid, tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _agent_answers(uid: int, tmp_path: Path) -> None:
    user = "labqtest-dirs"
    open_dir = tmp_path / "open"
    (open_dir / "proj").mkdir(parents=True)
    private = tmp_path / "private"
    (private / "secret").mkdir(parents=True)
    os.chmod(tmp_path, 0o755)
    os.chmod(open_dir, 0o755)
    os.chmod(private, 0o700)  # root's: the user cannot look inside
    answers = has_dirs(
        [
            [uid, user, str(open_dir / "proj")],
            [uid, user, str(open_dir / "gone")],
            [uid, user, str(private / "secret")],
            [uid, user, str(private / "no-such")],
            [0, "root", str(private / "no-such")],
            [2**31 - 7, "ghost", str(open_dir / "proj")],  # no such account here
            [uid, "alice", str(open_dir / "proj")],  # this uid is someone else here
            [uid, user, "relative/path"],
        ]
    )
    # Behind a directory they may not enter, "there" and "not there" read the same:
    # the root agent tells them nothing they could not see (the runner then fails as them).
    assert answers == [True, False, True, True, False, False, False, False]
    # A link on the way gives no verdict either way: where it points is not looked at
    # by root (the walk holds a descriptor per step and never follows one).
    os.symlink(private, open_dir / "link")
    assert has_dirs([[uid, user, str(open_dir / "link" / "no-such")]]) == [True]
    # Out of time: the rest is left for the next round, not answered "no".
    ticks = iter([0.0, 0.0, 5.0, 5.0])
    assert has_dirs([[uid, user, str(open_dir / "proj")]] * 3, budget_s=2.0, clock=lambda: next(ticks)) == [
        True,
        None,
        None,
    ]


def test_one_owner_cannot_crowd_out_the_others_and_a_busy_or_silent_node_holds_nothing_up() -> None:
    b = DirBook()
    many = [(1001, "alice", f"/a/{i:04d}") for i in range(300)]
    bob = (1002, "bob", "/b/proj")
    b.want([*many, bob], ["n1", "n2"])
    due = b.due(["n1", "n2"], 0.0, busy={"n2"})
    assert list(due) == ["n1"]  # n2 still has a call out
    assert bob in due["n1"][:2] and len(due["n1"]) == 256  # bob's turn comes at once
    b.record("n1", [bob], [True], 0.0)
    assert b.where(bob, ["n1", "n2"]) == frozenset({"n1"})  # known there: enough to place it
    # A silent node counts as not having it: a job is told "nowhere", not left looking.
    b.record("n1", [many[0]], [False], 0.0)
    assert b.where(many[0], ["n1", "n2"]) is None  # n2 has not said
    b.silent = frozenset({"n2"})
    assert b.where(many[0], ["n1", "n2"]) == frozenset()
    assert b.want([bob], ["n1", "n2"]) is False  # nothing to look for now


def test_a_cluster_job_waits_for_a_node_with_its_directory_and_starts_there(tmp_path: Path) -> None:
    launcher = MemoryLauncher()
    d = open_daemon(tmp_path / "state", launcher, ("n1", "n2"))
    try:
        d.gpus.dirs.active = True  # as once the agents are up
        live = d.control.submit(ALICE, {**SPEC, "workdir": "/srv/alice/proj"})  # not on the head: a cluster accepts it
        looked: list[bool] = []
        d.scheduler._look = lambda: looked.append(True)
        d.scheduler.one_pass()
        assert looked and d.store.get(live).state is JobState.PENDING
        assert "looking for its directory" in d.views.job(d.store.get(live), ALICE)["reasons"][0]
        # The agents answer: only n2 has it.
        due = d.gpus.dirs.due(["n1", "n2"], 0.0)
        key = (ALICE.uid, "alice", "/srv/alice/proj")
        assert due == {"n1": [key], "n2": [key]}
        d.gpus.dirs.record("n1", due["n1"], [False], 0.0)
        d.gpus.dirs.record("n2", due["n2"], [True], 0.0)
        d.scheduler.one_pass()
        row = d.store.get(live)
        assert row.state is JobState.STARTING and row.node == "n2"
        assert row.needs_dir == "/srv/alice/proj"
        # Nowhere: it waits, and says why in words its owner can act on.
        gone = d.control.submit(ALICE, {**SPEC, "workdir": "/srv/alice/gone"})
        d.scheduler.one_pass()
        for n in ("n1", "n2"):
            d.gpus.dirs.record(n, [(ALICE.uid, "alice", "/srv/alice/gone")], [False], 0.0)
        d.scheduler.one_pass()
        assert d.store.get(gone).state is JobState.PENDING
        reason = d.views.job(d.store.get(gone), ALICE)["reasons"][0]
        assert reason.startswith("placement: no node has its directory") and "submit with a snapshot" in reason
        # The preview says what the job would meet, from what is known (it asks nobody).
        preview = d.scheduler.preview(ALICE, {**SPEC, "workdir": "/srv/alice/gone"})
        assert not preview.get("starts_now") and "no node has its directory" in str(preview)
        preview = d.scheduler.preview(ALICE, {**SPEC, "workdir": "/srv/alice/new"})
        assert not preview.get("starts_now") and "looking for its directory" in str(preview)
        # n2 goes away: one machine left is still a cluster. The job that needs n2's
        # directory waits for it rather than failing on n1.
        d.nodes.set_all({"n1": node("n1")})
        back = d.control.submit(ALICE, {**SPEC, "workdir": "/srv/alice/proj"})
        d.scheduler.one_pass()
        assert d.store.get(back).state is JobState.PENDING
        assert "no node has its directory" in d.views.job(d.store.get(back), ALICE)["reasons"][0]
        # A job that needs no directory (as a snapshot of plain files) goes anywhere.
        free = d.control.submit(ALICE, {**SPEC, "workdir": ""})
        d.scheduler.one_pass()
        assert d.store.get(free).state is JobState.STARTING and d.store.get(free).needs_dir == ""
    finally:
        d.store.close()


def test_one_node_holds_no_job_back(tmp_path: Path) -> None:
    launcher = MemoryLauncher()
    d = open_daemon(tmp_path / "state", launcher, ("n1",))
    try:
        d.gpus.dirs.active = True
        job = d.control.submit(ALICE, {**SPEC, "workdir": "/tmp"})
        d.scheduler.one_pass()
        assert d.store.get(job).state is JobState.STARTING  # no look needed on one box
    finally:
        d.store.close()


def test_what_a_job_needs_of_a_node() -> None:
    from scheduler.codestore import code_ref
    from scheduler.job import JobSpec

    sha = "ab" * 32
    base = {"command": ["train"], "workdir": "/home/alice/proj/exp"}
    assert JobSpec.model_validate(base).needs_dir == "/home/alice/proj/exp"  # live: its workdir
    git = code_ref({"kind": "git", "repo": "/home/alice/proj", "commit": "3f2a91c0", "rel": "exp"}, sha)
    assert JobSpec.model_validate({**base, "code": git}).needs_dir == "/home/alice/proj"  # its commit is read there
    files = code_ref({"kind": "files", "repo": "", "rel": ""}, sha)
    assert JobSpec.model_validate({**base, "code": files}).needs_dir == ""  # self-contained
    fresh = code_ref({"kind": "git", "repo": "/home/alice/new", "commit": ""}, sha)
    assert JobSpec.model_validate({**base, "code": fresh}).needs_dir == ""  # no commit yet: every file is in it
    # A notebook also needs its token's own directory: this machine's, or a shared home.
    nb = {**base, "session": "notebook", "env": {"JUPYTER_TOKEN_FILE": "/home/alice/.local/share/labq/notebook-ab/token"}}
    assert JobSpec.model_validate(nb).needs_dir == "/home/alice/proj/exp\n/home/alice/.local/share/labq/notebook-ab"
    # `..` is resolved before any node walks it: /.. x 1,300 costs nothing; longer is refused.
    assert JobSpec.model_validate({**base, "workdir": "/" + "../" * 1300 + "srv"}).needs_dir == "/srv"
