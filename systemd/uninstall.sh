#!/usr/bin/env bash
# Remove the edge-agent service. Keeps the data unless asked:
#
#   sudo systemd/uninstall.sh            stop and disable the service, remove the unit and /opt/edge-agent;
#                                        KEEP /etc/edge-agent (config), /var/lib/edge-agent (the outbox: records not
#                                        yet published), the Numba cache and the user, so a reinstall carries on
#   sudo systemd/uninstall.sh --purge    also delete the config, the outbox, the cache and the edge-agent user
#   systemd/uninstall.sh --root DIR      the same inside a staged root (privileged steps printed, not run)
set -euo pipefail

NAME=edge-agent
ROOT=""
PURGE=0
YES=0

die() { echo "uninstall.sh: $*" >&2; exit 1; }
say() { echo "==> $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT="${2%/}"; shift 2 ;;
        --root=*) ROOT="${1#--root=}"; ROOT="${ROOT%/}"; shift ;;
        --purge) PURGE=1; shift ;;
        --yes|-y) YES=1; shift ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || die "--root $ROOT: not a directory"
    ROOT="$(cd "$ROOT" && pwd)"
    STAGED=1
else
    STAGED=0
    [ "$(id -u)" -eq 0 ] || die "run as root: sudo $0 $*"
fi

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

if [ "$STAGED" -eq 0 ] && [ -d /run/systemd/system ]; then
    say "stopping $NAME (it flushes the outbox first)"
    systemctl disable --now "$NAME" 2>/dev/null || true
else
    priv systemctl disable --now "$NAME"
fi

say "removing the unit and the program"
rm -f "$ROOT/etc/systemd/system/$NAME.service"
rm -rf "$ROOT/opt/${NAME:?}"
if [ "$STAGED" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
else
    priv systemctl daemon-reload
fi
rm -f "$ROOT/run/$NAME/status.sock"

state="$ROOT/var/lib/$NAME"
if [ "$PURGE" -eq 1 ]; then
    if [ "$YES" -eq 0 ] && [ -f "$state/outbox.db" ] && [ -t 0 ]; then
        read -r -p "delete $state including records not yet published? [y/N] " answer
        case "$answer" in y|Y|yes) ;; *) die "nothing purged (the program is removed, the data kept)" ;; esac
    fi
    say "purging configuration, data, cache and the $NAME user"
    rm -rf "$ROOT/etc/${NAME:?}" "$state" "$ROOT/var/cache/${NAME:?}"
    if getent passwd "$NAME" >/dev/null || [ "$STAGED" -eq 1 ]; then
        priv userdel "$NAME"
    fi
else
    say "kept: $ROOT/etc/$NAME (config), $state (outbox), $ROOT/var/cache/$NAME, user $NAME (--purge removes them)"
fi
