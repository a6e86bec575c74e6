"""`labq logs`: a job's output, its tail, a rank's, or every rank's (issue 15).
Stdlib-only, as the rest of the client."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from scheduler.client import Client
from scheduler.console import UsageError
from scheduler.present import clean_log
from scheduler.shapes import WAITING_NAMES


def cmd_logs(c: Client, args: argparse.Namespace) -> int:
    offset = 0
    tty = sys.stdout.isatty()
    rank = args.rank
    if rank is not None and rank < 0:
        raise UsageError("--rank takes a rank number, 0 or more")
    if args.all_ranks:
        if rank is not None or args.follow or args.stderr:
            raise UsageError("--all-ranks shows every rank's whole output: no --rank, --follow or --stderr with it")
        return _all_ranks(c, args, tty)

    def write(chunk: dict[str, Any]) -> None:
        data = chunk["data"]
        # Your own job's output reaches your terminal as it is (colours, progress bars);
        # someone else's (an admin reading it) has its escape sequences shown, not obeyed.
        if tty and not args.raw and not chunk.get("yours", True):
            data = clean_log(data)
        sys.stdout.write(data)
        sys.stdout.flush()

    if args.tail is not None:
        if args.tail < 0:
            raise UsageError("--tail takes a number of lines, 0 or more")
        offset = _tail(c, args.job_id, args.tail, write, args.stderr, rank)
    while True:
        chunk = c.log(args.job_id, offset, stderr=args.stderr, rank=rank)
        if chunk["data"]:
            write(chunk)
        offset = chunk["offset"]
        if offset < chunk["size"]:
            continue
        if not args.follow or chunk["done"]:
            # One more read after the end: the last bytes may land just after the state flips.
            if args.follow:
                write(c.log(args.job_id, offset, stderr=args.stderr, rank=rank))
            elif offset == 0:
                _say_why_empty(c, args.job_id)
            return 0
        time.sleep(0.3)


def _all_ranks(c: Client, args: argparse.Namespace, tty: bool) -> int:
    """Every rank's output of a job over several nodes, each line prefixed with its rank."""
    rank, ranks = 0, 1
    while rank < ranks:
        offset, rest = 0, ""
        while True:
            chunk = c.log(args.job_id, offset, rank=rank)
            ranks = max(ranks, int(chunk.get("ranks") or 1))
            data = chunk["data"]
            if tty and not args.raw and not chunk.get("yours", True):
                data = clean_log(data)
            lines = (rest + data).split("\n")
            rest = lines.pop()
            for line in lines:
                sys.stdout.write(f"[rank {rank}] {line}\n")
            offset = chunk["offset"]
            if offset >= chunk["size"]:
                break
        if rest:
            sys.stdout.write(f"[rank {rank}] {rest}\n")
        rank += 1
    sys.stdout.flush()
    return 0


def _tail(c: Client, job_id: str, lines: int, write: Any, stderr: bool = False, rank: int | None = None) -> int:
    """Write the log's last `lines` lines; the offset after them. Reads windows from the
    end, each twice the last, so a huge log is never read whole."""
    want = max(4096, lines * 160)
    while True:
        chunk = c.log(job_id, tail=want, stderr=stderr, rank=rank)
        text = chunk["data"]
        have = text.splitlines(keepends=True)
        if len(have) > lines or chunk["start"] == 0 or want >= 2**20:
            if lines:
                write({**chunk, "data": "".join(have[-lines:])})
            return int(chunk["offset"])
        want *= 2


def _say_why_empty(c: Client, job_id: str) -> None:
    """An empty log of a job that has not started says so (on stderr: stdout stays the
    log's), where it printed nothing at all."""
    state = c.job(job_id).get("state")
    if state in WAITING_NAMES:
        print(f"labq: job {job_id} has not started yet ({state}): `labq logs -f {job_id}` waits for its output", file=sys.stderr)
