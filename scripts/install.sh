#!/usr/bin/env bash
# Team install (`make install`, `make uninstall`): labq for every user of a machine.
#
#   sudo make install                  # the head or a worker: daemon, Ray, UI
#   sudo make install CLIENT_ONLY=1    # a desktop: the stdlib-only `labq` client
#   sudo make uninstall [PURGE=1]      # PURGE also removes /etc/labq and the state
#
# What goes where (each overridable, e.g. for a test into a temporary prefix):
#   PREFIX=/opt/labq          a venv (PREFIX/venv) from a python every user can run
#   BINDIR=/usr/local/bin     `labq` on everyone's PATH
#   ETC=/etc/labq             labq.yaml (kept across installs; never overwritten)
#   STATE=/var/lib/labq       the daemon's state (0700, root)
#   NODE_STATE=/var/lib/labq-node   a worker's (`labq join`): Ray's token and the head's address
#   UNITDIR=/etc/systemd/system   labq.service (the daemon), labq-join.service (a worker)
#
# The python matters: an admin's pyenv or conda under /root (or any private home)
# cannot be run by anyone else, and every user's `labq` would fail. So the install
# checks, by running it as `nobody`, that other users can run the python it builds
# the venv from, and refuses one they cannot, saying why.
set -euo pipefail

ACTION=${1:-install}
PREFIX=${PREFIX:-/opt/labq}
BINDIR=${BINDIR:-/usr/local/bin}
ETC=${ETC:-/etc/labq}
STATE=${STATE:-/var/lib/labq}
NODE_STATE=${NODE_STATE:-/var/lib/labq-node}
UNITDIR=${UNITDIR:-/etc/systemd/system}
CLIENT_ONLY=${CLIENT_ONLY:-}
SRC=$(cd "$(dirname "$0")/.." && pwd)

say() { echo "labq install: $*"; }
die() { echo "labq install: $*" >&2; exit 1; }

runs_for_others() {
    # True if an unprivileged user can start this python and its venv module.
    local py=$1
    [ "$(id -u)" = 0 ] || return 0  # a non-root install is for its own user only
    runuser -u nobody -- "$py" -c "import venv, ensurepip" >/dev/null 2>&1
}

pick_python() {
    local py
    if [ -n "${PYTHON:-}" ]; then
        py=$(command -v "$PYTHON" || true)
        [ -n "$py" ] || die "PYTHON=$PYTHON: no such program"
        set -- "$py"
    else
        set -- /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11 /usr/bin/python3 \
            /usr/local/bin/python3.13 /usr/local/bin/python3.12 /usr/local/bin/python3.11 /usr/local/bin/python3
    fi
    local why=""
    for py in "$@"; do
        [ -x "$py" ] || continue
        if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            why="$py is older than 3.11"
            continue
        fi
        if ! runs_for_others "$py"; then
            local real dir
            real=$(readlink -f "$py")
            why="$py cannot be run by other users, or lacks the venv module (python3-venv)"
            for path in "$py" "$real"; do  # the name run, then what it resolves to
                dir=/
                for part in $(dirname "$path" | tr / ' '); do
                    dir=${dir%/}/$part
                    if ! runuser -u nobody -- test -x "$dir"; then
                        why="$py cannot be run by other users: it lives under $dir ($(stat -c '%U %A' "$dir"))"
                        break 2
                    fi
                done
            done
            continue
        fi
        echo "$py"
        return 0
    done
    die "no python 3.11+ that every user can run: ${why:-none found}. Install one system-wide (e.g. apt install python3.11 python3.11-venv) or name it with PYTHON=..."
}

do_install() {
    local py venv
    py=$(pick_python)
    venv=$PREFIX/venv
    say "python: $py ($("$py" -c 'import platform; print(platform.python_version())'))"
    mkdir -p "$PREFIX" "$BINDIR"
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    # Build from a copy: the checkout (perhaps another user's) gets no build files.
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    (cd "$SRC" && tar --exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=.demo \
        --exclude=__pycache__ --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache \
        --exclude=.hypothesis -cf - pyproject.toml README.md scheduler tui) | tar -C "$build" -xf -
    local target="$build"
    [ -n "$CLIENT_ONLY" ] || target="$build[daemon]"
    # PIP_ARGS: e.g. --no-deps (the install's own test), an index to use.
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade ${PIP_ARGS:-} "$target"
    chmod -R a+rX "$PREFIX"
    ln -sfn "$venv/bin/labq" "$BINDIR/labq"
    say "labq for every user: $BINDIR/labq -> $venv/bin/labq"
    [ -z "$CLIENT_ONLY" ] || { say "client only: set LABQ_URL/LABQ_TOKEN or LABQ_SOCKET to reach a daemon"; return 0; }

    install -d -m 0755 "$ETC"
    if [ ! -e "$ETC/labq.yaml" ]; then
        # The example's quotas file is the demo's (alice, bob, carol): a team starts with none.
        sed -e 's|^quotas_file: .*|quotas_file: ""                 # e.g. quotas.yaml next to this file (example: configs/quotas.yaml)|' \
            "$SRC/configs/labq.yaml" > "$ETC/labq.yaml"
        chmod 0644 "$ETC/labq.yaml"
        say "config: $ETC/labq.yaml (edit admins:, advertise: for a team head)"
    else
        say "config: $ETC/labq.yaml kept"
    fi
    install -d -m 0700 "$STATE"
    if [ -d "$UNITDIR" ]; then
        sed -e "s#/opt/labq/venv#$venv#g" -e "s#/var/lib/labq#$STATE#g" -e "s#/etc/labq#$ETC#g" \
            "$SRC/configs/labq.service" > "$UNITDIR/labq.service"
        sed -e "s#/opt/labq/venv#$venv#g" -e "s#/var/lib/labq-node#$NODE_STATE#g" \
            "$SRC/configs/labq-join.service" > "$UNITDIR/labq-join.service"
        chmod 0644 "$UNITDIR/labq.service" "$UNITDIR/labq-join.service"
        if [ -d /run/systemd/system ] && [ "$UNITDIR" = /etc/systemd/system ]; then
            systemctl daemon-reload
        fi
        say "units: $UNITDIR/labq.service (head: systemctl enable --now labq),"
        say "       $UNITDIR/labq-join.service (worker, after \`labq join\`: systemctl enable --now labq-join)"
    fi
}

do_uninstall() {
    if [ -L "$BINDIR/labq" ] && [ "$(readlink "$BINDIR/labq")" = "$PREFIX/venv/bin/labq" ]; then
        rm -f "$BINDIR/labq"
    fi
    for unit in labq.service labq-join.service; do
        if [ -e "$UNITDIR/$unit" ]; then
            if [ -d /run/systemd/system ] && [ "$UNITDIR" = /etc/systemd/system ]; then
                systemctl disable --now "$unit" 2>/dev/null || true
            fi
            rm -f "$UNITDIR/$unit"
        fi
    done
    rm -rf "$PREFIX"
    if [ -n "${PURGE:-}" ]; then
        rm -rf "$ETC" "$STATE" "$NODE_STATE"
        say "removed $PREFIX, $ETC and the state"
    else
        say "removed $PREFIX; kept $ETC and $STATE (PURGE=1 removes them)"
    fi
}

case "$ACTION" in
    install) do_install ;;
    uninstall) do_uninstall ;;
    *) die "usage: install.sh install|uninstall" ;;
esac
