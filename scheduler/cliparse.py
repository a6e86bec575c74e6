"""`labq`'s arguments: the whole parser for help and mistakes, only the command being
run otherwise (stdlib argparse; imported by every command)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, sized without `import shutil` (which brings bz2, lzma and
    more: ~2.5 ms of every command's start, for a width only help text uses)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None) -> None:
        if width is None:
            width = _columns() - 2  # as argparse: the terminal's width less a margin
        super().__init__(prog, indent_increment, max_help_position, width)


def _columns() -> int:
    """shutil.get_terminal_size().columns, by the same rules."""
    try:
        cols = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        cols = 0
    if cols <= 0:
        try:
            cols = os.get_terminal_size(sys.__stdout__.fileno()).columns if sys.__stdout__ else 0
        except (AttributeError, ValueError, OSError):
            cols = 0
    return cols or 80


class _Parser(argparse.ArgumentParser):
    """Sub-command parsers are made as the parser's own type, so all get the formatter."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kw)

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        """As argparse's, but an option the command does not know is reported by that
        command's parser ("labq submit: error: ..." with its usage), not by labq's, whose
        usage lists no option of any command (a newcomer's `labq submit --gpu-count 2`)."""
        ns: argparse.Namespace
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            self._innermost(ns).error("unrecognized arguments: " + " ".join(extra))
        return ns

    def _innermost(self, ns: argparse.Namespace) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self
        while True:
            sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
            child = sub.choices.get(getattr(ns, sub.dest, None) or "") if sub is not None else None
            if child is None:
                return parser
            parser = child


# -- parser --------------------------------------------------------------------------------------------
class _Unbuilt:
    """Stands in for the sub-parsers of the commands not being run: `labq queue` need
    not build the other thirty (a third of a command's own start-up time)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **kw: self


class _Only:
    def __init__(self, sub: Any, command: str | None) -> None:
        self.sub, self.command = sub, command

    def add_parser(self, name: str, **kw: Any) -> Any:
        return self.sub.add_parser(name, **kw) if self.command in (None, name) else _Unbuilt()


def command_of(argv: list[str]) -> str | None:
    """The sub-command argv names (after the global options), or None: unknown yet."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--socket", "--url"):
            i += 2
            continue
        if a.startswith("-"):
            if a.startswith(("--socket=", "--url=")):
                i += 1
                continue
            return None  # -h, or a mistake: the whole parser says what is wrong
        return a if a in COMMAND_NAMES else None
    return None


def _resource_options(s: Any, time_help: str, grace_help: str) -> None:
    """What any job asks for: resources, time, where, env, name, priority, grace."""
    s.add_argument(
        "--gpus", type=int,
        help="GPUs in all (default 1); more than one node has: spread over whole nodes (a multiple of the node size, e.g. "
        "--gpus 16 on 8-GPU nodes is 2 nodes), as --nodes 2 --gpus-per-node 8 says explicitly",
    )
    s.add_argument("--cpus", type=float)
    s.add_argument("--gpu-type", metavar="TYPE", help="only GPUs of this type (labq gpus shows them): h100, a100-80g")
    s.add_argument("--constraint", metavar="L1,L2", help="only nodes with these labels (labq gpus shows them): ib")
    s.add_argument("--memory", help="e.g. 16G")
    s.add_argument("--time", help=time_help)
    s.add_argument("--workdir")
    s.add_argument("--env", action="append", metavar="KEY=VALUE")
    s.add_argument("--name")
    s.add_argument("--priority", type=int, help="order among your own jobs (higher first)")
    s.add_argument("--grace", help=grace_help)


def _session_options(s: Any) -> None:
    """What a session asks for. It is one job of the live tree (no array, chain,
    snapshot or notify), so those are not offered; their defaults say so to build_spec."""
    _resource_options(s, "time limit with its unit: 2h, 30m (default: the daemon's)", "seconds between SIGHUP/SIGTERM and SIGKILL")
    s.set_defaults(after=None, after_any=None, array=None, sweep=None, max_running=None, notify=False, no_snapshot=True)


def _job_options(s: Any) -> None:
    """What a job asks for: `submit`'s options, and `rerun`'s changes to a job."""
    _resource_options(
        s,
        "time limit with its unit: 4h, 30m, 90s, 1-00:00:00 (a bare number is refused: Slurm reads minutes); "
        "without it the daemon's default applies (24h), which backfill must assume",
        "seconds between SIGTERM and SIGKILL",
    )
    s.add_argument(
        "--no-snapshot", action="store_true",
        help="run the workdir as it is when the job starts, not the code as it is now (labq freezes it by default)",
    )
    s.add_argument(
        "--after", metavar="IDS",
        help="start only after these jobs SUCCEEDED (41,42); if one ends otherwise, this job is cancelled",
    )
    s.add_argument("--after-any", metavar="IDS", help="start only after these jobs ended, in any state")
    s.add_argument(
        "--array", metavar="SPEC",
        help="many tasks from one submission, as Slurm: 0-99, 1,3,5-9, 0-98:2; %%8 at the end runs at most 8 "
        "at once. {index} in the command is each task's index (also $LABQ_ARRAY_INDEX); tasks are ID.INDEX",
    )
    s.add_argument(
        "--sweep", action="append", metavar="NAME=V1,V2",
        help="a grid of values, repeatable (--sweep lr=1e-3,3e-4 --sweep bs=32,64: 4 tasks); {NAME} in the "
        "command is the task's value (also $LABQ_PARAM_NAME)",
    )
    s.add_argument("--max-running", type=int, metavar="N", help="an array's or sweep's tasks at once (the %%N)")
    s.add_argument(
        "--nodes", type=int, metavar="N",
        help="run on N whole nodes at once, one rank per node (all start together, one failing stops all); each "
        "gets $LABQ_MASTER_ADDR, $LABQ_MASTER_PORT, $LABQ_NODE_RANK, $LABQ_NNODES (and torchrun's own names)",
    )
    s.add_argument("--gpus-per-node", type=int, metavar="G", help="with --nodes: GPUs on each node (a whole node's)")
    s.add_argument(
        "--preemptible", action=argparse.BooleanOptionalAction, default=None,
        help="a scavenger: run only on GPUs nobody else can use now, give them back (SIGTERM, grace, requeued) as "
        "soon as another job needs them; not held back by your weekly budget, not counted toward your guarantee "
        "(rerun --no-preemptible: a regular job again)",
    )
    s.add_argument(
        "--notify", action="store_true",
        help="tell me when it ends, as ~/.config/labq/config.yaml says: notify: {webhook: URL} (Slack-compatible) "
        "or notify: {command: CMD} (run as you, with $LABQ_MESSAGE)",
    )


_REF = re.compile(r"([0-9]+)(?:\.([0-9]+|\*))?", re.ASCII)  # too many digits: the daemon says "no job"


def job_ref(text: str) -> str:
    """A job id on the command line: 41, 42.7 (task 7 of array 42), 42.* (all of array 42)."""
    m = _REF.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a job id (41, or 42.7 for task 7 of array 42)")
    return m.group(1) if m.group(2) in (None, "*") else f"{m.group(1)}.{m.group(2)}"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every sub-command, or only `command`'s (what `main` parses with)."""
    p = _Parser(prog="labq", description="Fair-share GPU job queue for a research team.")
    p.add_argument(
        "--socket", help="daemon socket (default: $LABQ_SOCKET, /run/labq/labq.sock or a personal one)"
    )
    p.add_argument("--url", help="a remote daemon's listener, https://HOST:PORT (default: $LABQ_URL)")
    sub = _Only(p.add_subparsers(dest="cmd", required=True, metavar="COMMAND"), command)

    up = sub.add_parser("up", help="start the daemon (embedded Ray unless --address)")
    up.add_argument("--foreground", action="store_true", help="stay in the foreground (systemd)")
    up.add_argument("--address", help="join this Ray cluster instead of starting one")
    up.add_argument("--gpus", type=int, help="logical GPUs to declare on a machine without NVIDIA GPUs")
    up.add_argument("--cpus", type=int, help="CPUs the embedded Ray advertises")
    up.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics on this port (loopback unless the config says)",
    )
    up.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="also take remote clients over TCP (token required; TLS from the config beyond loopback)",
    )
    up.add_argument(
        "--advertise",
        metavar="ADDRESS",
        help="a team head: Ray and `labq join` on this address the other machines reach (token auth, TLS)",
    )
    up.add_argument("--state-dir", help="where the database and logs live")
    up.add_argument("--config", help="daemon config YAML (see configs/labq.yaml)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the daemon to answer")

    down = sub.add_parser("down", help="stop the daemon")
    g = down.add_mutually_exclusive_group()
    g.add_argument("--drain", action="store_true", help="start nothing new, wait for running jobs")
    g.add_argument("--kill", action="store_true", help="cancel running jobs (SIGTERM, grace, SIGKILL)")
    down.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for it to stop")

    s = sub.add_parser("submit", help="queue a job: labq submit [opts] -- CMD... | labq submit job.yaml")
    s.add_argument(
        "--dry-run", action="store_true", help="say whether it would start now, or why it would wait"
    )
    _job_options(s)
    s.add_argument("--json", action="store_true")
    s.add_argument("command", nargs=argparse.REMAINDER)

    rr = sub.add_parser("rerun", help="submit a job of yours again, with changes: labq rerun 41 --gpus 2")
    rr.add_argument("job_id", type=job_ref)
    rr.add_argument("--dry-run", action="store_true", help="say whether it would start now, or why it would wait")
    rr.add_argument("--live", action="store_true", help="run the code as it is now in the workdir, not the job's frozen code")
    _job_options(rr)
    rr.add_argument("--json", action="store_true")

    sh = sub.add_parser(
        "shell", help="an interactive shell on a node with GPUs, queued as a job: labq shell --gpus 1 --time 2h"
    )
    _session_options(sh)
    at = sub.add_parser("attach", help="back into a shell session you detached from (Ctrl-] detaches)")
    at.add_argument("job_id", type=job_ref)
    nb = sub.add_parser("notebook", help="JupyterLab on a node with GPUs, queued as a job; prints its URL and tunnel")
    _session_options(nb)
    nb.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for JupyterLab's address")

    df = sub.add_parser("diff", help="a job's code against its commit, or two jobs' code: labq diff 41 [42]")
    df.add_argument("job_id", type=job_ref)
    df.add_argument("other", nargs="?", type=job_ref)

    w = sub.add_parser("wait", help="block until jobs end; exit 0 only if all SUCCEEDED (for scripts)")
    w.add_argument("job_ids", nargs="+", type=job_ref, metavar="ID")
    w.add_argument("--timeout", help="give up after this long (e.g. 2h) and exit 124")
    w.add_argument("-q", "--quiet", action="store_true", help="print nothing, only the exit status")

    q = sub.add_parser("queue", help="pending and running jobs, with why each waits")
    q.add_argument("--all", action="store_true", help="include finished jobs")
    q.add_argument("--user")
    q.add_argument("--mine", action="store_true")
    q.add_argument("--state", help="comma-separated states")
    q.add_argument("-t", "--tasks", action="store_true", help="each started task of an array too (ID.INDEX)")
    q.add_argument("--json", action="store_true")

    sh = sub.add_parser("show", help="one job in full, with its history")
    sh.add_argument("job_id", type=job_ref)
    sh.add_argument("--json", action="store_true")

    lg = sub.add_parser("logs", help="a job's output: stdout and stderr in order, or --stderr alone")
    lg.add_argument("job_id", type=job_ref)
    lg.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    lg.add_argument("-n", "--tail", type=int, metavar="N", help="only the last N lines (then follow, with -f)")
    lg.add_argument(
        "-e", "--stderr", action="store_true",
        help="only what it wrote to stderr (its last attempt); without it, both, in the order they came",
    )
    lg.add_argument(
        "--raw", action="store_true", help="another user's log as it is, escape sequences included"
    )
    lg.add_argument("--rank", type=int, metavar="N", help="a job over several nodes: rank N's output (default: rank 0)")
    lg.add_argument(
        "--all-ranks", action="store_true", help="a job over several nodes: every rank's output, each line prefixed [rank N]"
    )

    ca = sub.add_parser("cancel", help="cancel jobs (running ones get SIGTERM, then SIGKILL after the grace)")
    ca.add_argument("job_ids", type=job_ref, nargs="+", metavar="ID", help="42, 42.7 (one task), 42.* (the array)")
    ca.add_argument(
        "--now", action="store_true", help="no grace period: SIGKILL at once (also for a job already stopping)"
    )

    gp = sub.add_parser("gpus", help="every node and GPU: utilization, memory, health, who holds it")
    gp.add_argument("--json", action="store_true")

    us = sub.add_parser("usage", help="GPU-hours allocated and really used, per researcher or job")
    us.add_argument("--since", help="window, e.g. 24h, 7d, 30d (default 7d; 30d with --predictions)")
    us.add_argument("--by", choices=("user", "job"), default="user")
    us.add_argument(
        "--predictions", action="store_true",
        help="learned runtimes instead: their error on finished jobs (MAE, coverage) and what is known per kind",
    )  # fmt: skip
    fmt = us.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true")
    fmt.add_argument("--json", action="store_true")

    qu = sub.add_parser("quota", help="show or (admins) change quotas")
    qsub = qu.add_subparsers(dest="quota_cmd", required=True)
    qs = qsub.add_parser("show")
    qs.add_argument("--json", action="store_true")
    qset = qsub.add_parser("set")
    qset.add_argument("user")
    for name in ("shares", "guaranteed-gpus", "max-gpus", "max-jobs", "gpu-hours-per-week"):
        qset.add_argument(f"--{name}", dest=name.replace("-", "_"))
    qset.add_argument("--idle-action", help="notify, cancel or requeue jobs whose GPUs sit idle")
    qset.add_argument(
        "--scavenge", choices=("yes", "no"),
        help="over the weekly budget, run the user's jobs as scavengers (preemptibly, on idle GPUs) instead of holding them",
    )

    sm = sub.add_parser("simulate", help="replay a job trace through labq's policy and baselines")
    sm.add_argument("trace", nargs="?", help="CSV with job_id,vc,submit_s,num_gpus,duration_s")
    sm.add_argument("--from-history", action="store_true", help="replay this daemon's own finished jobs")
    sm.add_argument("--state-dir", help="the daemon's state dir (for --from-history)")
    sm.add_argument(
        "--nodes", default="80", help="how many nodes (default 80); or a typed cluster: 40:h100,40:a100 (with a "
        "gpu_type column in the trace; no rho then)",
    )
    sm.add_argument("--gpus-per-node", type=int, default=8)
    sm.add_argument("--policy", default="fairshare", help="one, a comma list, or all")
    shares = sm.add_mutually_exclusive_group()
    shares.add_argument("--quotas", help="quotas.yaml: shares per researcher/tenant")
    shares.add_argument("--shares", help="CSV of tenant sizes (helios_philly_vc_sizes.csv)")
    sm.add_argument("--limit", type=int, help="only the first N jobs")
    sm.add_argument("--no-rho", action="store_true", help="skip the per-tenant replays alone (faster)")
    sm.add_argument(
        "--preemptible", metavar="TENANTS", help="these tenants' jobs are scavengers (labq's own policy only)"
    )
    sm.add_argument("--json", metavar="FILE", help="write the report as JSON ('-' for stdout)")
    sm.add_argument("--plot", metavar="PNG", help="write a plot")
    sm.add_argument("--quiet", action="store_true")

    tu = sub.add_parser("tui", help="the terminal UI: queue, jobs and logs, GPUs, team, quotas")
    tu.add_argument("--read-only", action="store_true", help="hide every action")
    tu.add_argument("--refresh", type=float, help="seconds between polls (default 1)")
    tu.add_argument("--keymap", help="remap keys by binding id: 'labq.new=ctrl+n,labq.quit=ctrl+q'")
    tu.add_argument("--web", action="store_true", help="serve it to a browser on localhost")
    tu.add_argument("--port", type=int, help="port for --web (default 8000)")
    tu.add_argument("--host", help="address for --web (default 127.0.0.1); the printed URL's token is required")
    tu.add_argument("--remote", metavar="HOST", help="against HOST's daemon, through an SSH tunnel")
    tu.add_argument("--remote-socket", help="daemon socket on HOST (default /run/labq/labq.sock)")
    di = sub.add_parser("desktop-install", help="add labq to the desktop's application menu")
    di.add_argument("--remote", metavar="HOST", help="an entry that opens HOST's queue")

    nd = sub.add_parser("node", help="(admins) invite a machine, drain, resume or remove a node")
    ndsub = nd.add_subparsers(dest="node_cmd", required=True)
    for verb in ("drain", "resume"):
        ndsub.add_parser(verb).add_argument("node", help="node name (as `labq gpus` shows it) or id")
    ni = ndsub.add_parser("invite", help="a one-time `labq join` command for a new machine (team head only)")
    ni.add_argument("--ttl", default="15m", help="how long the invite stays valid (default 15m, at most 7d)")
    ni.add_argument("--json", action="store_true")
    ndsub.add_parser("remove", help="forget a joined node: its Ray node gets no new jobs").add_argument("node")

    jn = sub.add_parser("join", help="(root, on a new machine) join a team head with an admin's invite")
    jn.add_argument("url", nargs="?", help="the head's listener, as the invite prints it (https://HEAD:7450)")
    jn.add_argument("--secret", help="the invite's one-time secret (lqjoin_...)")
    jn.add_argument("--cert-sha256", help="the head's certificate fingerprint, as the invite prints it")
    jn.add_argument("--rejoin", action="store_true", help="start again from the saved join (the systemd unit)")
    jn.add_argument("--gpus", type=int, help="GPUs to offer (default: what NVML finds)")
    jn.add_argument("--cpus", type=int, help="CPUs to offer (default: all)")
    jn.add_argument("--labels", metavar="L1,L2", help="this machine's node labels (--constraint asks for them): ib,nvlink")
    jn.add_argument(
        "--simulate-gpu", metavar="MODEL", help="no NVIDIA GPU here: serve the --gpus as this model's (h200, h100)"
    )
    jn.add_argument("--node-ip", help="this machine's address toward the head (default: the route's)")
    jn.add_argument("--state-dir", help="where the token and Ray's files live (default /var/lib/labq-node)")
    jn.add_argument("--once", action="store_true", help="do not restart Ray when it stops")
    dr = sub.add_parser("doctor", help="check Ray, NVML, the socket, permissions and the database")
    dr.add_argument("--json", action="store_true")

    tk = sub.add_parser("token", help="tokens for remote clients: (admins) create, list, revoke")
    tksub = tk.add_subparsers(dest="token_cmd", required=True)
    tc = tksub.add_parser("create", help="issue a token for USER (shown once, stored hashed)")
    tc.add_argument("user")
    tc.add_argument("--expires", help="e.g. 90d (default: never)")
    tc.add_argument("--note", help="what it is for, e.g. 'alice laptop'")
    tc.add_argument("--json", action="store_true")
    tl = tksub.add_parser("list", help="tokens (admins: all; others: their own)")
    tl.add_argument("--json", action="store_true")
    tksub.add_parser("revoke", help="revoke a token by id").add_argument("token_id")

    au = sub.add_parser("audit", help="quota changes, cancels and other admin actions")
    au.add_argument("--json", action="store_true")
    au.add_argument("-n", "--limit", type=int, default=200, metavar="N", help="the N latest entries you may see (200)")
    return p


COMMAND_NAMES = frozenset(
    {"up", "down", "submit", "queue", "show", "logs", "cancel", "gpus", "usage", "quota", "simulate", "tui", "wait", "rerun", "diff", "shell", "attach", "notebook"}
    | {"desktop-install", "node", "doctor", "token", "audit", "join"}
)
