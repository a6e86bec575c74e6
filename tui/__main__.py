"""`labq tui` and `labq desktop-install` (the `labq` command execs `python -m tui`).

python -m tui [--socket PATH] [--read-only] [--refresh 1] [--keymap 'id=key,...']
              [--web [--port 8000]] [--remote HOST [--remote-socket PATH]]
python -m tui desktop-install [--remote HOST]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from scheduler import safefs
from scheduler.paths import ROOT_SOCKET, client_socket

ICON = """<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">
<rect x="4" y="10" width="56" height="44" rx="6" fill="#1f2933"/>
<rect x="10" y="18" width="10" height="28" fill="#7bd88f"/><rect x="24" y="26" width="10" height="20" fill="#7bd88f"/>
<rect x="38" y="22" width="10" height="24" fill="#fcd34d"/><rect x="52" y="34" width="4" height="12" fill="#f87171"/>
</svg>
"""


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="labq tui", description="the labq terminal UI")
    p.add_argument("--socket", help="the daemon's socket (default: as for labq)")
    p.add_argument("--read-only", action="store_true", help="hide every action: a wall-screen monitor")
    p.add_argument("--refresh", type=float, default=1.0, help="seconds between polls")
    p.add_argument(
        "--keymap", default="", help="remap keys by binding id: 'labq.new=ctrl+n,labq.quit=ctrl+q'"
    )
    p.add_argument("--web", action="store_true", help="serve the UI to a browser on localhost")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--host", default="127.0.0.1", help="address for --web (default loopback; the URL's token is required)"
    )
    p.add_argument("--remote", metavar="HOST", help="open it against HOST's daemon through an SSH tunnel")
    p.add_argument("--remote-socket", default=str(ROOT_SOCKET), help="the daemon socket on HOST")
    p.add_argument("command", nargs="?", choices=["desktop-install"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def parse_keymap(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SystemExit(f"labq: --keymap takes binding-id=key pairs, got {item!r}")
        out[key] = value
    return out


def tunnel(host: str, remote_socket: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Forward a local Unix socket to the daemon's socket on `host` (ssh -L)."""
    if shutil.which("ssh") is None:
        raise SystemExit("labq: --remote needs ssh on this machine")
    local = Path(f"/tmp/labq-{os.getuid()}") / f"remote-{host.replace('/', '_')}.sock"
    try:
        # Ours alone: someone else's /tmp/labq-UID could swap the tunnel's socket.
        safefs.private_dir(local.parent, 0o700, parents=False)
    except safefs.UnsafePath as e:
        raise SystemExit(f"labq: {e}") from None
    local.unlink(missing_ok=True)
    proc = subprocess.Popen(
        ["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{local}:{remote_socket}", host],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not local.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"labq: could not open an SSH tunnel to {host}:{remote_socket}")
        time.sleep(0.1)
    return proc, local


def desktop_install(remote: str | None) -> int:
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    apps = data / "applications"
    icons = data / "icons" / "hicolor" / "scalable" / "apps"
    apps.mkdir(parents=True, exist_ok=True)
    icons.mkdir(parents=True, exist_ok=True)
    (icons / "labq.svg").write_text(ICON)
    labq = shutil.which("labq") or f"{sys.executable} -m scheduler.cli"
    suffix = f"-{remote}" if remote else ""
    exec_line = f"{labq} tui" + (f" --remote {remote}" if remote else "")
    entry = apps / f"labq{suffix}.desktop"
    entry.write_text(
        "[Desktop Entry]\n"
        "Type=Application\n"
        f"Name=labq{f' ({remote})' if remote else ''}\n"
        "Comment=The team's GPU queue: submit jobs, watch the queue and the GPUs\n"
        f"Exec={exec_line}\n"
        "Icon=labq\n"
        "Terminal=true\n"
        "Categories=Development;Science;Monitor;\n"
        "Keywords=GPU;queue;jobs;scheduler;\n"
    )
    print(f"wrote {entry} and {icons / 'labq.svg'}; labq is in your application menu (opens in a terminal)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    if args.command == "desktop-install":
        return desktop_install(args.remote)
    keymap = parse_keymap(args.keymap)
    if args.web:
        from tui.web import TokenServer

        cmd = [sys.executable, "-m", "tui", "--refresh", str(args.refresh)]
        for flag, value in (("--socket", args.socket), ("--keymap", args.keymap), ("--remote", args.remote)):
            if value:
                cmd += [flag, value]
        if args.read_only:
            cmd.append("--read-only")
        TokenServer(shlex.join(cmd), host=args.host, port=args.port, title="labq").serve()
        return 0
    ssh: subprocess.Popen[bytes] | None = None
    # LABQ_URL (a remote daemon's TCP listener, with a token) applies unless a socket is named.
    socket: Path | None = Path(args.socket) if args.socket else None
    if socket is None and not os.environ.get("LABQ_URL"):
        socket = client_socket()
    if args.remote:
        ssh, socket = tunnel(args.remote, args.remote_socket)
    try:
        from tui.api import ClientBackend
        from tui.app import LabqApp

        LabqApp(ClientBackend(socket), read_only=args.read_only, refresh_s=args.refresh, keymap=keymap).run()
    finally:
        if ssh is not None:
            ssh.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
