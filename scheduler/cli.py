"""`labq`: the command line. Each subcommand is one small function over the Client.

Exit codes: 0 ok, 1 refused or failed (one line on stderr), 2 bad usage,
3 no daemon running.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scheduler.cli_logs import cmd_logs
from scheduler.cli_spec import apply_job_options, build_spec
from scheduler.client import Client, ClientError, NoDaemon, Remote
from scheduler.cliparse import build_parser, command_of
from scheduler.console import UsageError, die, emit_json, say
from scheduler.present import (
    clean,
    gib,
    job_holder,
    job_text,
    max_gpus_text,
    parse_env,
    pct,
    placeholder_warning,
    preview_lines,
    queue_cells,
    stamp,
    where_or_why,
)
from scheduler.shapes import TERMINAL_NAMES
from scheduler.units import (
    UnitError,
    format_duration,
    parse_duration,
)


def _lazy(module: str, name: str) -> Callable[[Client, argparse.Namespace], int]:
    """A command that lives in a module of its own, imported only when it runs (what
    `labq queue` imports is part of every command's budget)."""

    def run(c: Client, args: argparse.Namespace) -> int:
        import importlib

        fn = getattr(importlib.import_module(module), name)
        return int(fn(c, args))

    return run


# -- commands ------------------------------------------------------------------------------------------
def show_preview(out: dict[str, Any], as_json: bool) -> int:
    """`--dry-run` of submit and rerun: the scheduler's answer, said as the UI's form says it."""
    if as_json:
        emit_json(out)
        return 0
    for line in preview_lines(out, time.time()):
        say({"head": "", "reason": "  - "}.get(line.kind, f"  {line.label}: ") + line.text)
    return 0


def cmd_submit(c: Client, args: argparse.Namespace) -> int:
    spec, job_file, lines = build_spec(args, remote=c.remote is not None)
    typo = placeholder_warning(spec)
    if typo:
        say(f"labq: warning: {typo}", file=sys.stderr)
    try:
        if args.dry_run:
            return show_preview(c.preview(spec), args.json)
        from scheduler.cli_code import freeze

        note = freeze(c, spec, args.no_snapshot)
        job_id = c.submit(spec)
    except ClientError as e:
        msg = str(e)
        if job_file is not None and e.status == 400:
            field = msg.split(":", 1)[0].split(".", 1)[0]
            if field in lines:
                msg = f"{job_file} line {lines[field]}: {msg}"
        raise ClientError(msg, e.status) from None
    if note:
        say(note, file=sys.stderr)
    if args.json:
        emit_json({"id": job_id})
    elif spec.get("array") or spec.get("sweep"):
        say(f"submitted array {job_id} (tasks {job_id}.INDEX; labq queue -t lists them)")
    else:
        say(f"submitted job {job_id}")
    return 0


# What a rerun keeps of the job it repeats (the rest, e.g. its chain, is the new job's own).
RERUN_KEEPS = (
    "command", "gpus", "cpus", "memory", "time", "workdir", "env", "name", "priority", "grace", "umask",
    "array", "sweep", "max_running", "code", "preemptible", "nodes", "gpu_type", "constraint",
)


def cmd_rerun(c: Client, args: argparse.Namespace) -> int:
    """The job again, as submitted (same command, directory, environment, resources,
    and code: its frozen snapshot), with the options given changed: one verb with the
    UI's `r`. `--live` runs the code as it is now in the workdir instead."""
    old = c.job(args.job_id)
    spec_seen = old.get("spec") or {}
    if old.get("private") or "command" not in spec_seen:
        raise ClientError(f"job {args.job_id} belongs to {old['user']}: you can rerun only your own jobs", 403)
    if old.get("kind", "batch") != "batch":
        raise UsageError(f"job {args.job_id} is a {old['kind']} session: start a new one with labq {old['kind']}")
    spec = {k: spec_seen[k] for k in RERUN_KEEPS if spec_seen.get(k) not in (None, "", [], {})}
    apply_job_options(spec, args)
    try:
        spec["env"] = {**(spec.get("env") or {}), **parse_env(args.env or [])}
    except ValueError as e:
        raise UsageError(f"--env: {e}") from None
    if args.dry_run:
        return show_preview(c.preview(spec), args.json)
    note = ""
    if args.live or args.no_snapshot:
        from scheduler.cli_code import freeze

        # --live: the tree as it is now, frozen now as the job's was (one that ran
        # without a snapshot keeps running without one).
        note = freeze(c, spec, args.no_snapshot or not spec.get("code"))
    elif isinstance(spec.get("code"), dict):
        spec["code"] = {"id": spec["code"]["id"]}
    job_id = c.submit(spec)
    if note:
        say(note, file=sys.stderr)
    if args.json:
        emit_json({"id": job_id, "rerun_of": int(args.job_id) if args.job_id.isdigit() else args.job_id})
    else:
        say(f"submitted job {job_id} (a rerun of job {args.job_id})")
    return 0


def _time_col(j: Mapping[str, Any], now: float) -> str:
    """The CLI's one time column: how long it waited (with its ETA) or ran."""
    cells = queue_cells(j, now)
    eta = cells["ETA"]
    return f"{cells['WAIT / RUN']} (eta {eta})" if eta and eta != "?" else cells["WAIT / RUN"]


def cmd_queue(c: Client, args: argparse.Namespace) -> int:
    jobs = c.jobs(include_finished=args.all, user=args.user, state=args.state, tasks=args.tasks)
    if args.mine:
        me = c.health()["caller"]
        jobs = [j for j in jobs if j["user"] == me]
    if args.json:
        emit_json(jobs)
        return 0
    now = time.time()
    # A KIND column when there are interactive sessions to tell apart from batch jobs.
    kinds = any(j.get("kind", "batch") != "batch" for j in jobs)
    rows = [("ID", "USER", "NAME", *(("KIND",) if kinds else ()), "GPUS", "STATE", "TIME", "REASON / NODE")]
    for j in jobs:
        cell = queue_cells(j, now)
        rows.append(
            (
                cell["ID"],
                cell["USER"],
                cell["NAME"][:24],
                *((cell["KIND"],) if kinds else ()),
                cell["GPUS"],
                cell["STATE"],
                _time_col(j, now),
                where_or_why(j, detail=True),
            )
        )
    n = len(rows[0]) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    for r in rows:
        say("  ".join(r[i].ljust(widths[i]) for i in range(n)) + "  " + r[n])
    if len(rows) == 1:
        say("(no jobs)" if args.all else "(no pending or running jobs; --all shows finished ones)")
    ray = c.health()["ray"]
    if not ray.get("connected"):
        say(f"Ray is unreachable, nothing starts until it is back: {str(ray.get('error'))[:200]}")
    return 0


def cmd_show(c: Client, args: argparse.Namespace) -> int:
    j = c.job(args.job_id)
    if args.json:
        emit_json(j)
        return 0
    for line in job_text(j, time.time()).splitlines():
        say(line)
    return 0


def cmd_wait(c: Client, args: argparse.Namespace) -> int:
    """Until every job has ended: 0 if all SUCCEEDED, 1 otherwise, 124 on --timeout
    (as coreutils' timeout). Polls gently: every 0.2 s at first, every 2 s at most."""
    try:
        limit = None if args.timeout is None else parse_duration(args.timeout)
    except UnitError as e:
        raise UsageError(f"--timeout: {e}") from None
    deadline = None if limit is None else time.monotonic() + limit
    left = list(dict.fromkeys(args.job_ids))
    ended: dict[str, str] = {}
    seen_lost: set[str] = set()
    delay = 0.2
    while left:
        for job_id in list(left):
            j = c.job(job_id)
            state = j["state"]
            if state == "NODE_LOST" and job_id not in seen_lost:
                seen_lost.add(job_id)  # it may be requeued a moment later: look again
                continue
            if state in TERMINAL_NAMES:
                ended[job_id] = state
                left.remove(job_id)
                if not args.quiet:
                    code = f" (exit code {j['exit_code']})" if j.get("exit_code") not in (None, 0) else ""
                    say(f"job {job_id} {state}{code}")
        if not left:
            break
        if deadline is not None and time.monotonic() >= deadline:
            say(f"labq: still waiting for {', '.join(f'job {i}' for i in left)} after {format_duration(limit or 0)}", file=sys.stderr)
            return 124
        time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(2.0, delay * 1.5)
    return 0 if all(s == "SUCCEEDED" for s in ended.values()) else 1


def cmd_cancel(c: Client, args: argparse.Namespace) -> int:
    failed = 0
    for job_id in args.job_ids:
        try:
            out = c.cancel(job_id, now=args.now)
            say(f"job {job_id}: {out['result']}")
        except ClientError as e:
            if isinstance(e, NoDaemon) or len(args.job_ids) == 1:
                raise
            # Most refusals name the job already ("job 41 already ended"): say it once.
            say(f"labq: {e}" if str(e).startswith(f"job {job_id}") else f"labq: job {job_id}: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def cmd_gpus(c: Client, args: argparse.Namespace) -> int:
    out = c.nodes()
    if args.json:
        emit_json(out)
        return 0
    for n in out["nodes"]:
        kind = "SIMULATED" if n["simulated"] else "real" if n.get("nvml_gpus") is not None else "no GPU report yet"
        state = "schedulable" if n["schedulable"] else "drained"
        if not n.get("trusted", True):
            state = "UNTRUSTED: in Ray without `labq join`, gets no jobs"
        if not n.get("alive", True):
            state = "LOST"
        typed = f"{n['gpu_type']} " if n.get("gpu_type") else ""
        labels = f"  labels: {', '.join(n['labels'])}" if n.get("labels") else ""
        say(f"{n['name']}  {n['gpus_used']}/{n['gpus']} {typed}GPUs in use  ({kind}, {state}){labels}")
        host = n.get("host")
        if host:
            say(
                f"  host: CPU {host['cpu_percent']:.0f}% of {host['cpus']}   "
                f"memory {gib(host['memory_used'])}/{gib(host['memory_total'])} GiB"
            )
        if n.get("note"):
            say(f"  note: {n['note']}")
        if n.get("stale"):
            say(
                f"  STALE: the GPU monitor last answered {format_duration(n.get('age_s'))} ago; values below are that old"
            )
        if n.get("monitor_error"):
            say(f"  monitor: {n['monitor_error']}")
        if not n.get("gpu_list"):
            if n["gpus"]:
                say("  (no GPU report from this node yet)")
            continue
        say(
            f"  {'GPU':<4}{'NAME':<14}{'UTIL':>5}{'MEM GiB':>14}{'TEMP':>6}{'POWER W':>12}  "
            f"{'HEALTH':<9}JOB / USER"
        )
        for g in n["gpu_list"]:
            mem = f"{gib(g['memory_used'])}/{gib(g['memory_total'])}"
            temp = "n/a" if g["temperature_c"] is None else f"{g['temperature_c']}C"
            power = (
                "n/a"
                if g["power_mw"] is None
                else f"{g['power_mw'] / 1000:.0f}/{(g['power_limit_mw'] or 0) / 1000:.0f}"
            )
            health = "ok" if g["healthy"] else "UNHEALTHY"
            holder = job_holder(g) if g.get("job_id") else "-"
            say(
                f"  {g['index']:<4}{(g['name'] or 'n/a')[:13]:<14}{pct(g['util_gpu']):>5}{mem:>14}"
                f"{temp:>6}{power:>12}  {health:<9}{holder}"
            )
            if not g["healthy"]:
                say(f"      {g['problem']}")
            if g.get("blocked"):
                say(f"      {g['blocked']}")
            for proc in g.get("processes", []):
                who = (
                    job_holder(proc)
                    if proc.get("job_id")
                    else "OUTSIDE labq (not started by the scheduler)"
                )
                say(
                    f"      pid {proc.get('pid', '-')!s:<8} {gib(proc['used_memory'])} GiB  SM {pct(proc['sm_util'])}  {who}"
                )
    if not out["ray"].get("connected"):
        say(f"Ray: unreachable ({out['ray'].get('error')})")
    return 0


def cmd_predictions(c: Client, args: argparse.Namespace) -> int:
    out = c.predictions(since=args.since or "30d")
    if args.json:
        emit_json(out)
        return 0
    a = out["accuracy"]
    if not a["jobs"]:
        say("no finished jobs to learn from yet (a prediction needs runs of the same kind that succeeded)")
        return 0
    say(
        f"{a['jobs']} finished jobs, {a['predicted']} had a prediction when they were submitted: "
        f"mean error {format_duration(a['mae_s'])}, median {format_duration(a['median_ae_s'])}; "
        f"{a['coverage']:.0%} ran within the 90th percentile"
    )
    if a["confident"]:
        say(f"{a['confident']} confident (used for backfill and ETAs): {a['confident_coverage']:.0%} within it")
    rows = [
        (k["user"], k["kind"], str(k["runs"]), format_duration(k["median_s"]), format_duration(k["p90_s"]),
         "yes" if k["confident"] else "no")
        for k in out["kinds"]
    ]  # fmt: skip
    table = [("USER", "KIND", "RUNS", "MEDIAN", "P90", "CONFIDENT"), *rows]
    widths = [max(len(clean(r[i])) for r in table) for i in range(6)]
    for r in table:
        say("  ".join(clean(v).ljust(widths[i]) for i, v in enumerate(r)).rstrip())
    return 0


def cmd_usage(c: Client, args: argparse.Namespace) -> int:
    if getattr(args, "predictions", False):
        return cmd_predictions(c, args)
    out = c.usage(since=args.since or "7d", by=args.by)
    rows = out["rows"]
    if args.json:
        emit_json(out)
        return 0
    cols = ["user", "allocated_gpu_h", "busy_gpu_h", "idle_gpu_h", "util_mean", "jobs"]
    if args.by == "job":
        cols = ["job_id", "name", "user", "gpus", "state", *cols[1:5]]
    if args.csv:
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if r.get(k) is None else r.get(k) for k in cols])
        return 0
    head = {
        "user": "USER",
        "job_id": "JOB",
        "name": "NAME",
        "gpus": "GPUS",
        "state": "STATE",
        "allocated_gpu_h": "GPU-h ALLOC",
        "busy_gpu_h": "GPU-h BUSY",
        "idle_gpu_h": "GPU-h IDLE",
        "util_mean": "MEAN UTIL",
        "jobs": "JOBS",
    }

    def cell(k: str, v: Any) -> str:
        if v is None:
            return "n/a"
        if k.endswith("_gpu_h"):
            return f"{v:.2f}"
        if k == "util_mean":
            return f"{v:.0f}%"
        return str(v)[:24]

    table = [[head[k] for k in cols]] + [[cell(k, r.get(k)) for k in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    say(f"GPU usage since {stamp(out['since'])}")
    for row in table:
        say(
            "  ".join(
                v.rjust(widths[i]) if i and cols[i] not in ("name", "user", "state") else v.ljust(widths[i])
                for i, v in enumerate(row)
            )
        )
    if not rows:
        say("(no GPU time in this window)")
    return 0


def exec_tui(args: argparse.Namespace) -> int:
    """Hand over to the UI package in a fresh interpreter: scheduler/ never imports tui/."""
    import importlib.util

    if importlib.util.find_spec("textual") is None:
        # A client-only install (`make install CLIENT_ONLY=1`, `pip install labq`).
        die("the terminal UI is not installed here: pip install 'labq[ui]' (the CLI works without it)")
    argv = [sys.executable, "-m", "tui"]
    if args.cmd == "desktop-install":
        argv.append("desktop-install")
    else:
        for flag in ("refresh", "keymap", "port", "host", "remote", "remote_socket"):
            v = getattr(args, flag, None)
            if v is not None:
                argv += [f"--{flag.replace('_', '-')}", str(v)]
        for flag in ("read_only", "web"):
            if getattr(args, flag, False):
                argv.append(f"--{flag.replace('_', '-')}")
    if getattr(args, "remote", None) and args.cmd == "desktop-install":
        argv += ["--remote", args.remote]
    if args.socket:
        argv += ["--socket", args.socket]
    os.execv(sys.executable, argv)
    return 0  # not reached


def cmd_quota(c: Client, args: argparse.Namespace) -> int:
    if args.quota_cmd == "set":
        fields: dict[str, Any] = {}
        for name in ("shares", "guaranteed_gpus", "max_gpus", "max_jobs", "gpu_hours_per_week"):
            raw = getattr(args, name)
            if raw is None:
                continue
            if raw.lower() == "none":
                fields[name] = None
                if name == "max_gpus":
                    fields["max_gpus_per_type"] = None  # no cap at all, per type neither
                continue
            if name == "max_gpus":
                # N, TYPE:N per GPU type, or both (4,h100:2).
                try:
                    parts = [x.strip().partition(":") for x in raw.split(",") if x.strip()]
                    per_type = {t: int(n) for t, sep, n in parts if sep}
                    overall = [int(t) for t, sep, _ in parts if not sep]
                except ValueError:
                    raise UsageError(f"--max-gpus takes N, TYPE:N (h100:4), both (8,h100:4) or 'none', got {raw!r}") from None
                if len(overall) > 1:
                    raise UsageError(f"--max-gpus: one overall N at most, got {raw!r}")
                if overall:
                    fields["max_gpus"] = overall[0]
                if per_type:
                    fields["max_gpus_per_type"] = per_type
                continue
            try:
                fields[name] = float(raw) if name in ("shares", "gpu_hours_per_week") else int(raw)
            except ValueError:
                raise UsageError(
                    f"--{name.replace('_', '-')} takes a number or 'none', got {raw!r}"
                ) from None
        if args.idle_action is not None:
            fields["idle_action"] = args.idle_action
        if args.scavenge is not None:
            fields["scavenge"] = args.scavenge == "yes"
        out = c.set_quota(args.user, fields)
        def shown(k: str, v: Any) -> str:
            if k == "max_gpus_per_type":
                pairs = v.items() if isinstance(v, dict) else v or ()
                return " ".join(f"{t}:{n}" for t, n in pairs) or "none"
            return "none" if v is None else str(v)  # the word `quota set` takes, not Python's None

        changes = ", ".join(f"{k}: {shown(k, out['old'].get(k))} -> {shown(k, v)}" for k, v in out["new"].items())
        say(f"{args.user}: {changes}")
        if out.get("warning"):
            print(f"labq: warning: {out['warning']}", file=sys.stderr)
        return 0
    out = c.quotas()
    if args.json:
        emit_json(out)
        return 0
    cap_w = max([7, *(len(max_gpus_text(q)) + 2 for q in out["quotas"])])  # `8 h100:4` fits
    say(
        f"{'USER':<16}{'SHARES':>7}{'GUAR':>6}{'MAXGPU':>{cap_w}}{'MAXJOB':>7}{'GPUH/WK':>9}"
        f"{'HELD':>6}{'RUN':>5}{'PEND':>6}{'FACTOR':>8}{'USAGE GPU-h':>13}  OVER BUDGET"
    )
    for q in out["quotas"]:

        def opt(v: Any) -> str:
            return "-" if v is None else f"{v:g}"

        say(
            f"{q['user']:<16}{q['shares']:>7g}{q['guaranteed_gpus']:>6}{max_gpus_text(q):>{cap_w}}"
            f"{opt(q['max_jobs']):>7}{opt(q['gpu_hours_per_week']):>9}{q['held_gpus']:>6}"
            f"{q['running_jobs']:>5}{q['pending_jobs']:>6}{q['factor']:>8.3f}{q['usage_gpu_s'] / 3600:>13.2f}"
            f"  {'scavenge' if q.get('scavenge') else 'wait'}"
        )
    return 0


def cmd_node(c: Client, args: argparse.Namespace) -> int:
    if args.node_cmd == "invite":
        invite = c.invite(parse_duration(args.ttl))
        if args.json:
            emit_json(invite)
            return 0
        say(f"On the new machine, as root, within {args.ttl} (one use):")
        say(f"  {invite['command']}")
        return 0
    if args.node_cmd == "remove":
        out = c.remove_node(args.node)
        say(f"{out['node']}: removed; a Ray node there is untrusted now and gets no new jobs")
        # Said here because it is the moment it matters: trust only decides where labq
        # places jobs; the token decides who may use Ray at all.
        say(
            "it still holds Ray's token (with it, code runs on every node): stop labq-join there and wipe its "
            "state dir (/var/lib/labq-node unless --state-dir); labq cannot change the token yet"
        )
        return 0
    out = c.drain(args.node, drain=args.node_cmd == "drain")
    if args.node_cmd == "drain":
        running = out["running_jobs"]
        tail = (
            f"; {len(running)} running job{'s' if len(running) != 1 else ''} will finish there"
            if running
            else ""
        )
        say(f"{out['node']}: drained, no new jobs{tail}")
    else:
        say(f"{out['node']}: schedulable again")
    return 0


def cmd_doctor(c: Client, args: argparse.Namespace) -> int:
    import platform

    rows: list[tuple[bool, str, str]] = [(sys.version_info >= (3, 11), "python", platform.python_version())]
    sock = c.socket_path
    if c.remote is not None:
        rows.append((True, "remote", f"{c.where} (token {'given' if c.remote.token else 'MISSING'})"))
    else:
        rows.append((sock.exists(), "socket", f"{sock}" + ("" if sock.exists() else " does not exist")))
    try:
        checks = c.doctor()
    except ClientError as e:  # no daemon, or it refuses us: that is the diagnosis
        rows.append((False, "daemon", f"{e}"))
        checks = []
    for ch in checks:
        rows.append((bool(ch["ok"]), ch["check"], ch["detail"]))
    if args.json:
        emit_json([{"check": n, "ok": ok, "detail": d} for ok, n, d in rows])
    else:
        for ok, name, detail in rows:
            say(f"{'ok  ' if ok else 'FAIL'}  {name:<18} {detail}")
    return 0 if all(ok for ok, _, _ in rows) else 1


def cmd_audit(c: Client, args: argparse.Namespace) -> int:
    rows = c.audit(args.limit)
    if args.json:
        emit_json(rows)
        return 0
    for r in rows:
        say(f"{stamp(r['time'])}  {r['actor']:<12} {r['action']:<12} {r['target']:<12} {r['detail']}")
    return 0


def cmd_token(c: Client, args: argparse.Namespace) -> int:
    if args.token_cmd == "create":
        out = c.create_token(args.user, args.expires, args.note or "")
        if args.json:
            emit_json(out)
            return 0
        until = f", valid until {stamp(out['expires'])}" if out.get("expires") else ", no expiry"
        say(f"token {out['id']} for {out['user']}{until}. It is shown only this once:")
        say()
        say(f"  {out['token']}")
        say()
        say("On their machine: put it in ~/.config/labq/token (chmod 600) or LABQ_TOKEN,")
        say("and set LABQ_URL to this daemon's `listen` address (https://HOST:PORT).")
        return 0
    if args.token_cmd == "revoke":
        out = c.revoke_token(args.token_id)
        say(f"token {out['id']} of {out['user']} revoked")
        return 0
    rows = c.tokens()
    if args.json:
        emit_json(rows)
        return 0
    now = time.time()
    say(f"{'ID':<13} {'USER':<12} {'CREATED':<17} {'BY':<10} {'STATE':<22} {'LAST USED':<17} NOTE")
    for r in rows:
        if r["revoked"]:
            state = f"revoked {stamp(r['revoked'])}"
        elif r["expires"] and r["expires"] <= now:
            state = "expired"
        else:
            state = f"until {stamp(r['expires'])}" if r["expires"] else "valid"
        used = stamp(r["last_used"]) if r["last_used"] else "never"
        say(
            f"{r['id']:<13} {r['user']:<12} {stamp(r['created']):<17} {r['created_by']:<10} {state:<22} {used:<17} {r['note']}"
        )
    return 0


def cmd_down(c: Client, args: argparse.Namespace) -> int:
    mode = "kill" if args.kill else "drain" if args.drain else "refuse"
    out = c.shutdown(mode)
    if out["active"]:
        say(
            f"stopping after {out['active']} active job(s) {'are stopped' if mode == 'kill' else 'finish'}..."
        )
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            c.health()
        except NoDaemon:
            say("labq daemon stopped")
            return 0
        except ClientError:
            pass
        time.sleep(0.3)
    die(f"the daemon is still stopping after {args.timeout:.0f}s; `labq queue` shows what runs")


def cmd_up(args: argparse.Namespace) -> int:
    from scheduler.paths import daemon_socket, default_state_dir

    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    sock = Path(args.socket) if args.socket else daemon_socket()
    if args.gpus is not None and args.gpus < 0:
        raise UsageError("--gpus must be >= 0")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise UsageError("--metrics-port must be between 1 and 65535 (0 turns it off)")
    if args.foreground:
        return _run_foreground(args, state_dir, sock)
    c = Client(sock, timeout=5)
    try:
        h = c.health()
        where = f" (pid {h['pid']}, state dir {h['state_dir']})" if "pid" in h else ""
        die(f"a labq daemon already runs{where} at {sock}")
    except NoDaemon:
        pass
    import subprocess

    from scheduler import safefs

    os.umask(0o077)  # the state dir and the daemon's log are the daemon's alone
    try:
        safefs.private_dir(state_dir, 0o700)
    except (OSError, safefs.UnsafePath) as e:
        die(f"state dir: {e}")
    log_path = state_dir / "daemon.log"
    # -P: the daemon's own directory is not on its import path, and it runs in its state
    # dir: started from a directory another user can write, it would otherwise import
    # their `scheduler` package, as root (and so would the Ray workers it starts).
    argv = [
        sys.executable,
        "-P",
        "-m",
        "scheduler.cli",
        "--socket",
        str(sock),
        "up",
        "--foreground",
        "--state-dir",
        str(state_dir),
    ]
    for opt in ("address", "gpus", "cpus", "config", "metrics_port", "listen", "advertise"):
        v = getattr(args, opt)
        if v is not None:
            argv += [f"--{opt.replace('_', '-')}", str(v)]
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=state_dir,
        )
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.startswith("labq:")]
            die(lines[-1].removeprefix("labq: ") if lines else f"the daemon exited (see {log_path})")
        try:
            h = c.health()
            gpus = h.get("nvml") or {}
            say(f"labq daemon up (pid {h.get('pid', '?')}), Ray at {h['ray']['address']}, socket {sock}")
            if gpus.get("why_none"):
                say(f"  no real GPUs: {gpus['why_none']}")
            return 0
        except NoDaemon:
            time.sleep(0.3)
    die(f"the daemon did not answer within {args.timeout:.0f}s (see {log_path})")


def _run_foreground(args: argparse.Namespace, state_dir: Path, sock: Path) -> int:
    import logging

    from scheduler.config import ConfigError, load_daemon_config
    from scheduler.daemon import DaemonError, run_daemon
    from scheduler.raycluster import RayError
    from scheduler.store import StoreError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config_path = Path(args.config) if args.config else None
    if config_path is None and (state_dir / "labq.yaml").exists():
        config_path = state_dir / "labq.yaml"
    if config_path is None and os.geteuid() == 0 and Path("/etc/labq/labq.yaml").exists():
        config_path = Path("/etc/labq/labq.yaml")  # a team install's (make install)
    try:
        config = load_daemon_config(config_path)
        import dataclasses

        if args.metrics_port is not None:
            config = dataclasses.replace(config, metrics_port=args.metrics_port)
        if args.listen is not None:
            config = dataclasses.replace(config, listen=args.listen)
        if args.advertise is not None:
            config = dataclasses.replace(config, advertise=args.advertise)
        if config.advertise and args.address:
            die("--advertise is for labq's own (embedded) Ray head; with --address the cluster's operator runs Ray")
        run_daemon(state_dir, sock, config, args.address, args.gpus, args.cpus)
    except (ConfigError, DaemonError, RayError, StoreError) as e:
        die(str(e))
    return 0


COMMANDS = {
    "submit": cmd_submit,
    "queue": cmd_queue,
    "show": cmd_show,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "wait": cmd_wait,
    "rerun": cmd_rerun,
    "diff": _lazy("scheduler.cli_code", "cmd_diff"),
    "shell": _lazy("scheduler.cli_session", "cmd_shell"),
    "attach": _lazy("scheduler.cli_session", "cmd_attach"),
    "notebook": _lazy("scheduler.cli_session", "cmd_notebook"),
    "gpus": cmd_gpus,
    "usage": cmd_usage,
    "node": cmd_node,
    "doctor": cmd_doctor,
    "quota": cmd_quota,
    "audit": cmd_audit,
    "token": cmd_token,
    "down": cmd_down,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(command_of(argv)).parse_args(argv)
    args.dashdash = "--" in argv
    try:
        if args.cmd == "up":
            return cmd_up(args)
        if args.cmd == "simulate":
            from scheduler.simcli import cmd_simulate

            return cmd_simulate(args)
        if args.cmd in ("tui", "desktop-install"):
            return exec_tui(args)
        if args.cmd == "join":
            from scheduler.join import JoinError, cmd_join

            try:
                return cmd_join(args)
            except JoinError as e:
                die(str(e))
        sock = Path(args.socket) if args.socket else None
        client = Client(sock, remote=Remote(args.url) if args.url else None)
        return COMMANDS[args.cmd](client, args)
    except NoDaemon as e:
        die(str(e), 3)
    except (ClientError, UsageError, UnitError) as e:
        die(str(e))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
