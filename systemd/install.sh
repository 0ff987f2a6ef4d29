#!/usr/bin/env bash
# Install edge-agent as a systemd service on Raspberry Pi OS / Debian 12, in one step, from a clone:
#
#   sudo systemd/install.sh                 user, venv under /opt, directories, starter config, warm Numba cache,
#                                           unit enabled and started
#   sudo systemd/install.sh --no-start      everything but enabling/starting the service
#   systemd/install.sh --root DIR           stage into DIR instead of / (files only; privileged steps are printed,
#                                           not run: no user, no chown, no systemctl) - for packaging and tests
#
# Options: --source DIR (the project to pip-install; default: this clone), --admin USER (added to the edge-agent
# group so `edge-agent status` and `buffer` work without sudo; default: $SUDO_USER), --skip-venv (files only),
# --no-start. Idempotent: running it again upgrades the program, keeps the config and the data, and says what
# changed. Undo with systemd/uninstall.sh (which keeps the data unless --purge).
set -euo pipefail

NAME=edge-agent
ROOT=""
SOURCE=""
ADMIN="${SUDO_USER:-}"
START=1
VENV=1
GROUPS_NEEDED="gpio i2c dialout"

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "==> $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT="${2%/}"; shift 2 ;;
        --root=*) ROOT="${1#--root=}"; ROOT="${ROOT%/}"; shift ;;
        --source) [ $# -ge 2 ] || die "--source needs a directory"; SOURCE="$2"; shift 2 ;;
        --admin) [ $# -ge 2 ] || die "--admin needs a user name"; ADMIN="$2"; shift 2 ;;
        --no-start) START=0; shift ;;
        --skip-venv) VENV=0; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SOURCE="${SOURCE:-$(dirname "$HERE")}"
[ -f "$SOURCE/pyproject.toml" ] || die "no pyproject.toml in $SOURCE: run this from a clone of edge-agent or pass --source"

if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || die "--root $ROOT: not a directory"
    ROOT="$(cd "$ROOT" && pwd)"
    STAGED=1
else
    STAGED=0
    [ "$(id -u)" -eq 0 ] || die "run as root: sudo $0 $*"
fi

OPT="$ROOT/opt/$NAME"
ETC="$ROOT/etc/$NAME"
STATE="$ROOT/var/lib/$NAME"
CACHE="$ROOT/var/cache/$NAME"
UNIT_DIR="$ROOT/etc/systemd/system"
VENV_DIR="$OPT/venv"

# privileged: executed for real, printed when staging
priv() {
    if [ "$STAGED" -eq 1 ]; then
        printf '    (staged, not run)'
        for a in "$@"; do
            case "$a" in *[[:space:]]*) printf " '%s'" "$a" ;; *) printf ' %s' "$a" ;; esac
        done
        printf '\n'
    else
        "$@"
    fi
}

# install a file only when its content differs; say which
put() { # put MODE SRC DST
    local mode="$1" src="$2" dst="$3"
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        echo "    unchanged $dst"
        return 1
    fi
    mkdir -p "$(dirname "$dst")"
    install -m "$mode" "$src" "$dst"
    echo "    installed $dst"
    return 0
}

# -- checks --------------------------------------------------------------------------------------------------------
arch="$(uname -m)"
case "$arch" in
    aarch64|x86_64) ;;
    armv7l|armv6l) die "32-bit ARM ($arch) is not supported: PyPI has no numba wheel for it. Install the 64-bit Raspberry Pi OS." ;;
    *) echo "install.sh: warning: untested architecture $arch" >&2 ;;
esac
PY="${PYTHON:-python3}"
if [ "$VENV" -eq 1 ]; then
    command -v "$PY" >/dev/null || die "python3 not found: apt-get install python3 python3-venv"
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python 3.11 or newer is needed ($("$PY" --version 2>&1))"
    "$PY" -c 'import venv, ensurepip' 2>/dev/null || die "python3-venv is missing: sudo apt-get install python3-venv"
fi

# -- user and groups -----------------------------------------------------------------------------------------------
say "system user $NAME and groups ($GROUPS_NEEDED)"
for g in $GROUPS_NEEDED; do
    # SupplementaryGroups= fails the unit when a group does not exist (gpio/i2c are missing on a non-Pi Debian)
    if getent group "$g" >/dev/null; then
        echo "    group $g exists"
    else
        priv groupadd --system "$g"
    fi
done
if getent passwd "$NAME" >/dev/null; then
    echo "    user $NAME exists"
else
    priv useradd --system --user-group --home-dir "/var/lib/$NAME" --no-create-home --shell /usr/sbin/nologin \
        --comment "edge-agent service" "$NAME"
fi
priv usermod -a -G "${GROUPS_NEEDED// /,}" "$NAME"
if [ -n "$ADMIN" ] && [ "$ADMIN" != root ]; then
    if getent passwd "$ADMIN" >/dev/null; then
        priv usermod -a -G "$NAME" "$ADMIN"
        echo "    $ADMIN may read the status socket and the outbox after logging in again"
    else
        echo "install.sh: warning: --admin $ADMIN: no such user, skipped" >&2
    fi
fi

# -- program -------------------------------------------------------------------------------------------------------
if [ "$VENV" -eq 1 ]; then
    say "program: venv $VENV_DIR (pip install $SOURCE)"
    mkdir -p "$OPT"
    [ -x "$VENV_DIR/bin/python" ] || "$PY" -m venv "$VENV_DIR"
    "$VENV_DIR/bin/python" -m pip install --quiet --upgrade pip
    "$VENV_DIR/bin/python" -m pip install --quiet --upgrade "$SOURCE"
    echo "    $("$VENV_DIR/bin/edge-agent" version)"
else
    say "program: skipped (--skip-venv)"
fi
for d in docs examples; do
    if [ -d "$SOURCE/$d" ]; then
        for f in "$SOURCE/$d"/*; do [ -f "$f" ] && { put 0644 "$f" "$OPT/$d/$(basename "$f")" || true; }; done
    fi
done

# -- directories and configuration -----------------------------------------------------------------------------------
say "directories"
install -d -m 0750 "$ETC" "$STATE" "$CACHE" "$CACHE/numba"
priv chown "root:$NAME" "$ETC"
priv chown "$NAME:$NAME" "$STATE" "$CACHE" "$CACHE/numba"
echo "    $ETC $STATE $CACHE"

say "configuration"
if [ -f "$ETC/agent.toml" ]; then
    echo "    keeping $ETC/agent.toml"
    if ! cmp -s "$HERE/agent.toml.starter" "$ETC/agent.toml"; then
        put 0640 "$HERE/agent.toml.starter" "$ETC/agent.toml.example" || true
    fi
else
    put 0640 "$HERE/agent.toml.starter" "$ETC/agent.toml" || true
    echo "    a starter config (an emulated machine): edit it, then sudo systemctl reload $NAME"
fi
priv chown "root:$NAME" "$ETC/agent.toml"
if [ "$VENV" -eq 1 ]; then
    "$VENV_DIR/bin/edge-agent" config check "$ETC/agent.toml" >/dev/null \
        || echo "install.sh: warning: $ETC/agent.toml is not valid (edge-agent config check $ETC/agent.toml); the service will refuse to start" >&2
fi

# -- Numba cache -----------------------------------------------------------------------------------------------------
if [ "$VENV" -eq 1 ]; then
    say "warming the Numba cache (minutes on a Pi the first time)"
    if [ "$STAGED" -eq 1 ]; then
        NUMBA_CACHE_DIR="$CACHE/numba" "$VENV_DIR/bin/edge-agent" warmup
    else
        runuser -u "$NAME" -- env NUMBA_CACHE_DIR="$CACHE/numba" "$VENV_DIR/bin/edge-agent" warmup
    fi
fi

# -- unit ----------------------------------------------------------------------------------------------------------
say "systemd unit"
changed=0
put 0644 "$HERE/edge-agent.service" "$UNIT_DIR/$NAME.service" && changed=1

if [ "$STAGED" -eq 1 ]; then
    priv systemctl daemon-reload
    [ "$START" -eq 1 ] && priv systemctl enable --now "$NAME"
    say "staged into $ROOT"
    exit 0
fi
if [ ! -d /run/systemd/system ]; then
    say "systemd is not running on this machine (a container?): installed, not started"
    exit 0
fi
systemctl daemon-reload
if [ "$START" -eq 1 ]; then
    systemctl enable "$NAME" >/dev/null
    if systemctl is-active --quiet "$NAME"; then
        systemctl restart "$NAME"  # new program or unit: restart; the outbox carries on
        say "restarted $NAME"
    else
        systemctl start "$NAME"
        say "started $NAME"
    fi
    systemctl --no-pager --lines=0 status "$NAME" || true
    echo
    echo "check it:   edge-agent doctor      edge-agent status --watch      journalctl -u $NAME -f"
else
    [ "$changed" -eq 1 ] && echo "    unit installed; start with: sudo systemctl enable --now $NAME"
fi
