#!/usr/bin/env bash
# The field lab: edge-agent on a real systemd (PID 1), an arm64 userland and a real kernel, on one Debian 12 machine
# without hardware. Roots and images are built once and cached under ~/.cache/edge-agent-lab (EDGE_AGENT_LAB_CACHE).
#
#   bash .ci/run field [--parallel] [PART...]      (or: sudo lab/field.sh [--parallel] [PART...])
#
# --parallel runs the parts side by side (at most one of the qemu parts): what .ci/run does with systemd and arm64,
# whose waits (boot, watchdog, broker) and emulated compiles overlap well on two cores.
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

# run_part P: one part, its result line; returns non-zero when it failed (or could not run under CI=true)
run_part() {
    local p="$1" rc=0 t0
    t0=$(date +%s)
    export CLEANUP_LIST="$LOGDIR/cleanup-$p"
    ( set -euo pipefail; "part_$p" ) || rc=$?
    cleanup_part
    local dt=$(( $(date +%s) - t0 ))
    case $rc in
        0) result "$p" PASS "${dt}s" ;;
        77) if [ "${CI:-}" = true ]; then result "$p" "FAIL (cannot run, see above)" "${dt}s"; return 1; fi
            result "$p" "SKIPPED (cannot run, see above)" "${dt}s" ;;
        *) result "$p" "FAIL (exit $rc)" "${dt}s"; return 1 ;;
    esac
}

main() {
    [ "$(id -u)" -eq 0 ] || die "the field lab needs root (debootstrap, systemd-nspawn, binfmt_misc): sudo $0 $*"
    local parallel=0
    if [ "${1:-}" = "--parallel" ]; then parallel=1; shift; fi
    local parts=("$@")
    [ ${#parts[@]} -gt 0 ] || read -r -a parts <<<"$ALL_PARTS"
    for p in "${parts[@]}"; do
        case " $ALL_PARTS " in *" $p "*) ;; *) die "unknown part '$p' (parts: $ALL_PARTS)" ;; esac
    done
    if [ $parallel = 1 ]; then
        # side by side only parts that share nothing: the qemu parts share one guest image
        local q=0
        for p in "${parts[@]}"; do case $p in i2c|powercut|soak) q=$((q + 1)) ;; esac; done
        [ $q -le 1 ] || die "--parallel: i2c, powercut and soak share the guest; run them in sequence"
    fi
    mkdir -p "$CACHE" "$LOGDIR"
    # one lab at a time per cache: the runs share roots, run directories and mounts
    exec 9>"$CACHE/.lock"
    flock -n 9 || { echo "[lab] waiting for another field lab run to finish ($CACHE/.lock)" >&2; flock 9; }
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    say "field lab: parts ${parts[*]}$([ $parallel = 1 ] && echo ' (side by side)'); cache $CACHE; logs $LOGDIR"
    local failed=0 p pids=()
    if [ $parallel = 1 ]; then
        # host packages first, in sequence (apt takes one lock)
        need_host_packages debootstrap mmdebstrap systemd-container qemu-user-static mosquitto mosquitto-clients
        for p in "${parts[@]}"; do
            ( run_part "$p" ) > >(sed -u "s/^/[$p] /") 2>&1 &
            pids+=($!)
        done
        for p in "${pids[@]}"; do wait "$p" || failed=1; done
    else
        for p in "${parts[@]}"; do run_part "$p" || failed=1; done
    fi
    echo
    cat "$LOGDIR/results"
    return $failed
}

main "$@"
