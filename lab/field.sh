#!/usr/bin/env bash
# The field lab: edge-agent on a real systemd (PID 1), an arm64 userland and a real kernel, on one Debian 12 machine
# without hardware. Roots and images are built once and cached under ~/.cache/edge-agent-lab (EDGE_AGENT_LAB_CACHE).
#
#   bash .ci/run field [PART...]      (or: sudo lab/field.sh [PART...])
#
# Parts, in the order they run:
#   systemd    debootstrap root booted with systemd-nspawn -b: install.sh from a fresh clone, Type=notify start,
#              data on the broker, watchdog restart of a frozen agent and of a stalled stage (broker frozen), reload
#              with a bad config, SupplementaryGroups device access, systemd-analyze security, clean stop
#   i2c        qemu-system-x86_64 (TCG) with Debian 12's kernel: i2c-stub chips read by the real smbus2 backend
#   powercut   same guest: the agent committing steadily, qemu killed at a random moment, N times; after each
#              reboot integrity_check, seq accounting against what the broker received
#   arm64      debootstrap --arch=arm64 + qemu-user-static (binfmt_misc): install, warmup, emulated run, tests
#   soak       same guest as i2c: the unit with its MemoryMax running examples/plant.toml for 10 minutes
#
# Needs root. Installs the Debian packages it needs (debootstrap, systemd-container, qemu-*). A part that cannot run
# says why and counts as failed when CI=true (else as skipped). Exit code: 0 when every part asked for passed.
# Cleans up after itself (trap EXIT): no container, qemu process, mount or binfmt entry is left behind.
# Settings: EDGE_AGENT_LAB_CACHE, EDGE_AGENT_LAB_MIRROR (Debian mirror; default: this machine's apt source),
# POWERCUT_ROUNDS (10), SOAK_SECONDS (600).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
CACHE="${EDGE_AGENT_LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-agent-lab}"
SUITE=bookworm
LOGDIR="$CACHE/logs/$(date -u +%Y%m%dT%H%M%SZ)"
ALL_PARTS="systemd i2c powercut arm64 soak"

# shellcheck source=lab/lib.sh
. "$HERE/lib.sh"
# shellcheck source=lab/part_systemd.sh
. "$HERE/part_systemd.sh"
# shellcheck source=lab/part_qemu.sh
. "$HERE/part_qemu.sh"
# shellcheck source=lab/part_arm64.sh
. "$HERE/part_arm64.sh"

main() {
    [ "$(id -u)" -eq 0 ] || die "the field lab needs root (debootstrap, systemd-nspawn, binfmt_misc): sudo $0 $*"
    local parts=("$@")
    [ ${#parts[@]} -gt 0 ] || read -r -a parts <<<"$ALL_PARTS"
    for p in "${parts[@]}"; do
        case " $ALL_PARTS " in *" $p "*) ;; *) die "unknown part '$p' (parts: $ALL_PARTS)" ;; esac
    done
    mkdir -p "$CACHE" "$LOGDIR"
    # one lab at a time per cache: the runs share roots, run directories and mounts
    exec 9>"$CACHE/.lock"
    flock -n 9 || { echo "[lab] waiting for another field lab run to finish ($CACHE/.lock)" >&2; flock 9; }
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    say "field lab: parts ${parts[*]}; cache $CACHE; logs $LOGDIR"
    local failed=0 p rc t0
    for p in "${parts[@]}"; do
        t0=$(date +%s)
        rc=0
        ( set -euo pipefail; "part_$p" ) || rc=$?
        cleanup_part
        local dt=$(( $(date +%s) - t0 ))
        case $rc in
            0) result "$p" PASS "${dt}s" ;;
            77) if [ "${CI:-}" = true ]; then result "$p" "FAIL (cannot run, see above)" "${dt}s"; failed=1
                else result "$p" "SKIPPED (cannot run, see above)" "${dt}s"; fi ;;
            *) result "$p" "FAIL (exit $rc)" "${dt}s"; failed=1 ;;
        esac
    done
    echo
    cat "$LOGDIR/results"
    return $failed
}

main "$@"
