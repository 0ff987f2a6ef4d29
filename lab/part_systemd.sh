# shellcheck shell=bash
# Part "systemd": a Debian 12 root booted with systemd-nspawn -b (systemd as PID 1), the project installed from a
# fresh clone with systemd/install.sh, then the unit exercised for real. Sourced by lab/field.sh.

SYSTEMD_PKGS="systemd,systemd-sysv,dbus,python3-venv,mosquitto,ca-certificates,procps"

# ct_boot ROOT NAME: boot ROOT in the background; sets CT_PID (nspawn) and CT_LEADER (the container's PID 1)
ct_boot() {
    local root="$1" name="$2"; shift 2
    setsid systemd-nspawn -q --register=no --keep-unit --console=read-only -D "$root" -M "$name" "$@" -b \
        </dev/null >"$LOGDIR/$name-console.log" 2>&1 &
    CT_PID=$!
    on_cleanup "ct_stop $CT_PID"

    # the container's PID 1 is the child of nspawn that runs systemd: nspawn's own helper children (setting up the
    # mounts) come and go first, so wait for the comm to say systemd rather than take the first child seen
    local c
    CT_LEADER=""
    for _ in $(seq 1 120); do
        for c in $(pgrep -P "$CT_PID" || true); do
            [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ] && CT_LEADER=$c
        done
        [ -n "$CT_LEADER" ] && break
        kill -0 "$CT_PID" 2>/dev/null || { tail -n 30 "$LOGDIR/$name-console.log" >&2; fail "systemd-nspawn exited"; }
        sleep 0.5
    done
    [ -n "$CT_LEADER" ] || fail "no systemd as the container's PID 1 after 60 s"
}
# ct_stop PID: power the container off (SIGTERM to nspawn = orderly poweroff), kill it if it does not go
ct_stop() {
    local pid="$1"
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
    kill_tree "$pid" KILL
}
# in_ct CMD...: run CMD inside the container's namespaces, with a plain environment (+ the host's PIP_* settings)
in_ct() {
    local envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb)
    local v
    while IFS= read -r v; do envs+=("$v"); done < <(env | grep -E '^PIP_[A-Z_]+=' || true)
    nsenter --target "$CT_LEADER" --mount --uts --ipc --net --pid --root --wd env -i "${envs[@]}" "$@"
}
unit_prop() { in_ct systemctl show -p "$2" --value "$1"; }
journal_has() { in_ct journalctl -q -u edge-agent --since "@$1" --no-pager | grep -qE -- "$2"; }
restarted_since() { [ "$(unit_prop edge-agent NRestarts)" -gt "$1" ] && [ "$(unit_prop edge-agent ActiveState)" = active ]; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# broker_sees PORT N SECONDS: N fresh messages (not retained ones) under edge/# within SECONDS
broker_sees() {
    local n
    n=$(timeout "$(( $3 + 5 ))" mosquitto_sub -R -h 127.0.0.1 -p "$1" -t 'edge/#' -C "$2" -W "$3" 2>/dev/null | wc -l || true)
    [ "$n" -ge "$2" ]
}

part_systemd() {
    need_host_packages mmdebstrap systemd-container mosquitto-clients
    command -v systemd-nspawn >/dev/null || cannot "systemd-nspawn is missing (apt-get install systemd-container)"
    local base run root port name
    base=$(build_root "systemd-amd64" amd64 "$SYSTEMD_PKGS" mmdebstrap)
    run="$CACHE/run/systemd"
    name="edge-lab-$$"
    say "fresh copy of the root into $run"
    rm -rf "$run"; mkdir -p "$run"
    cp -a "$base" "$run/root"
    root="$run/root"
    on_cleanup "rm -rf '$run'"

    # pip inside the root as on the host; its cache persists between runs
    local binds=() d
    while read -r d; do binds+=("--bind-ro=$d"); done < <(copy_pip_config "$root")
    mkdir -p "$CACHE/pip/amd64"
    binds+=("--bind=$CACHE/pip/amd64:/root/.cache/pip")

    # the broker in the container listens on a free port of the (shared) loopback, so it meets no other broker
    port=$(free_port)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" >"$root/etc/mosquitto/conf.d/lab.conf"

    # the outbox on its own small ext4, so the lab can freeze it (a stalled stage)
    truncate -s 256M "$run/state.img"
    mkfs.ext4 -q -F "$run/state.img"
    mkdir -p "$run/state"
    mount -o loop "$run/state.img" "$run/state"
    on_cleanup "fsfreeze -u '$run/state' 2>/dev/null; umount -l '$run/state'"
    binds+=("--bind=$run/state:/var/lib/edge-agent")

    # the clone install.sh installs from, and the config it keeps: the starter pointed at the lab's broker
    fresh_clone "$root/root/edge-agent"
    mkdir -p "$root/etc/edge-agent"
    sed "s|mqtt://localhost:1883|mqtt://localhost:$port|" "$root/root/edge-agent/systemd/agent.toml.starter" \
        >"$root/etc/edge-agent/agent.toml"

    say "booting $name (systemd-nspawn -b)"
    ct_boot "$root" "$name" "${binds[@]}"
    wait_for 180 "systemd is up in the container (is-system-running: running/degraded)" \
        bash -c "s=\$(nsenter --target $CT_LEADER --mount --pid --root systemctl is-system-running 2>/dev/null); [ \"\$s\" = running ] || [ \"\$s\" = degraded ]"
    [ "$(in_ct cat /proc/1/comm)" = systemd ] || fail "PID 1 in the container is not systemd"
    check "systemd is PID 1 ($(in_ct systemctl --version | head -n 1))"
    wait_for 60 "the container's mosquitto listens on $port" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"

    # -- install from the clone; install.sh starts the unit: systemctl start returns once READY=1 arrived ------------
    say "systemd/install.sh from a fresh clone (pip installs into /opt/edge-agent/venv; log $LOGDIR/install.log)"
    local t0; t0=$(date +%s)
    if ! in_ct bash /root/edge-agent/systemd/install.sh >"$LOGDIR/install.log" 2>&1; then
        tail -n 30 "$LOGDIR/install.log" >&2; fail "install.sh failed"
    fi
    say "install.sh took $(( $(date +%s) - t0 ))s"
    [ "$(unit_prop edge-agent ActiveState)" = active ] || { in_ct journalctl -u edge-agent --no-pager | tail -n 30 >&2; fail "edge-agent is not active after install.sh"; }
    local t_exit t_active
    t_exit=$(unit_prop edge-agent InactiveExitTimestampMonotonic); t_active=$(unit_prop edge-agent ActiveEnterTimestampMonotonic)
    check "Type=$(unit_prop edge-agent Type) unit active: READY=1 $(( (t_active - t_exit) / 1000000 ))s after the start (TimeoutStartSec=$(unit_prop edge-agent TimeoutStartUSec))"
    in_ct systemctl show -p StatusText --value edge-agent | sed 's/^/[lab]   status: /'

    wait_for 120 "records from the service on the broker" broker_sees "$port" 3 30
    check "data on the broker: $(timeout 40 mosquitto_sub -R -h 127.0.0.1 -p "$port" -t 'edge/#' -C 1 -W 30 -v | cut -c1-140)"

    # -- device access through SupplementaryGroups, with the unit's own user, groups and device policy --------------
    # /dev/i2c-0 (char 89:0, root:i2c 0660) has no driver behind it here: ENXIO/ENODEV means the open got past the
    # file permissions (the group) and the device policy; EACCES would be the group missing, EPERM the policy.
    in_ct bash -c 'mknod -m 0660 /dev/i2c-0 c 89 0 && chgrp i2c /dev/i2c-0 && mknod -m 0600 /dev/i2c-9 c 89 9'
    local sg dp
    sg=$(unit_prop edge-agent SupplementaryGroups); dp=$(unit_prop edge-agent DevicePolicy)
    local probe='import errno, os, sys
for p in sys.argv[1:]:
    try:
        os.close(os.open(p, os.O_RDWR)); print(p, "opened")
    except OSError as e:
        print(p, errno.errorcode[e.errno])'
    local out
    out=$(in_ct systemd-run --quiet --wait --pipe -p User=edge-agent -p Group=edge-agent -p "SupplementaryGroups=$sg" \
        -p "DevicePolicy=$dp" -p "DeviceAllow=char-i2c rw" /opt/edge-agent/venv/bin/python -c "$probe" /dev/i2c-0 /dev/i2c-9)
    echo "$out" | sed 's/^/[lab]   /'
    echo "$out" | grep -qE '^/dev/i2c-0 (opened|ENXIO|ENODEV)$' || fail "the service user cannot open /dev/i2c-0 (root:i2c 0660) with SupplementaryGroups=$sg"
    echo "$out" | grep -qE '^/dev/i2c-9 EACCES$' || fail "control: /dev/i2c-9 (root 0600) should be refused with EACCES"
    check "SupplementaryGroups=$sg: the service user opens a root:i2c 0660 node, not a root 0600 one"

    # -- systemd-analyze security on the installed unit -------------------------------------------------------------
    in_ct systemd-analyze security --no-pager edge-agent >"$LOGDIR/security.txt" 2>&1 || true
    local exposure
    exposure=$(grep -oE 'Overall exposure level for edge-agent.service: [0-9.]+' "$LOGDIR/security.txt" | awk '{print $NF}')
    [ -n "$exposure" ] || { cat "$LOGDIR/security.txt" >&2; fail "systemd-analyze security printed no exposure level"; }
    awk -v e="$exposure" 'BEGIN {exit !(e <= 2.0)}' || fail "systemd-analyze security: exposure $exposure > 2.0 ($LOGDIR/security.txt)"
    check "systemd-analyze security edge-agent (installed, running): $(grep -oE 'Overall exposure level.*' "$LOGDIR/security.txt")"

    # -- watchdog: a frozen agent ---------------------------------------------------------------------------------
    local pid n since
    pid=$(unit_prop edge-agent MainPID); n=$(unit_prop edge-agent NRestarts); since=$(date +%s)
    say "SIGSTOP to the agent (pid $pid in the container): the watchdog (WatchdogSec=$(unit_prop edge-agent WatchdogUSec)) must kill and restart it"
    in_ct kill -STOP "$pid"
    wait_for 300 "systemd restarted the frozen agent" restarted_since "$n"
    journal_has "$since" 'Watchdog timeout' || fail "no 'Watchdog timeout' in the journal"
    [ "$(unit_prop edge-agent MainPID)" != "$pid" ] || fail "same MainPID after the restart"
    check "watchdog timeout, new pid $(unit_prop edge-agent MainPID), NRestarts $(unit_prop edge-agent NRestarts)"
    wait_for 120 "records on the broker after the restart" broker_sees "$port" 3 30

    # -- watchdog: a stage that stalls (the outbox's file system frozen: commits block in the kernel) -------------
    pid=$(unit_prop edge-agent MainPID); n=$(unit_prop edge-agent NRestarts); since=$(date +%s)
    say "fsfreeze of the outbox's file system: the outbox stage stalls, the pings must stop"
    fsfreeze -f "$run/state"
    wait_for 240 "the agent reports the stalled stage in the journal" journal_has "$since" 'stalled: .*outbox'
    wait_for 240 "systemd's watchdog fires" journal_has "$since" 'Watchdog timeout'
    fsfreeze -u "$run/state"
    wait_for 300 "systemd restarted the stalled agent" restarted_since "$n"
    check "stalled outbox: pings stopped, watchdog restart, new pid $(unit_prop edge-agent MainPID)"
    wait_for 120 "records on the broker after the restart" broker_sees "$port" 3 30

    # -- a frozen broker is an outage, not a stall: the agent keeps running and buffers ------------------------------
    local mpid
    mpid=$(unit_prop mosquitto MainPID); pid=$(unit_prop edge-agent MainPID); n=$(unit_prop edge-agent NRestarts)
    since=$(date +%s)
    # twice the watchdog interval: had an outage stopped the pings, systemd would have restarted the agent by then
    local wd freeze=100
    wd=$(unit_prop edge-agent WatchdogUSec)
    case "$wd" in *[0-9]s) [[ "${wd%s}" =~ ^[0-9]+$ ]] && freeze=$(( 2 * ${wd%s} + 5 )) ;; esac
    say "SIGSTOP to the broker (pid $mpid) for $freeze s (WatchdogSec=$wd): the agent must keep running (an outage never restarts it)"
    in_ct kill -STOP "$mpid"
    on_cleanup "nsenter --target $CT_LEADER --pid --mount --root kill -CONT $mpid 2>/dev/null || true"
    sleep "$freeze"
    in_ct kill -CONT "$mpid"
    [ "$(unit_prop edge-agent MainPID)" = "$pid" ] && [ "$(unit_prop edge-agent NRestarts)" = "$n" ] \
        || { in_ct journalctl -u edge-agent --since "@$since" --no-pager | tail -n 20 >&2; fail "the agent was restarted during a broker outage"; }
    wait_for 180 "records on the broker after the broker thawed" broker_sees "$port" 3 30
    check "broker frozen $freeze s: same pid $pid, no restart; data flows again"

    # -- reload with a bad config: rejected, the running one kept, the error in the journal --------------------------
    pid=$(unit_prop edge-agent MainPID); since=$(date +%s)
    in_ct cp /etc/edge-agent/agent.toml /etc/edge-agent/agent.toml.good
    in_ct bash -c 'sed -i "s/^rate_hz = .*/rate_hz = \"fast\"/" /etc/edge-agent/agent.toml'
    in_ct systemctl reload edge-agent
    wait_for 120 "the journal says the reload was rejected" journal_has "$since" 'reload rejected'
    [ "$(unit_prop edge-agent ActiveState)" = active ] && [ "$(unit_prop edge-agent MainPID)" = "$pid" ] \
        || fail "a bad config on reload stopped or restarted the agent"
    check "bad config on reload: $(in_ct journalctl -q -u edge-agent --since "@$since" --no-pager | grep -m1 'reload rejected' | cut -c1-200)"
    wait_for 120 "records on the broker with the kept config" broker_sees "$port" 3 30
    in_ct mv /etc/edge-agent/agent.toml.good /etc/edge-agent/agent.toml
    since=$(date +%s)
    in_ct systemctl reload edge-agent
    wait_for 120 "the journal says the good config was reloaded" journal_has "$since" 'reloaded'

    # -- clean stop -----------------------------------------------------------------------------------------------
    pid=$(unit_prop edge-agent MainPID)
    in_ct systemctl stop edge-agent
    local st res
    st=$(unit_prop edge-agent ExecMainStatus); res=$(unit_prop edge-agent Result)
    [ "$st" = 0 ] && [ "$res" = success ] || fail "stop: exit status $st, result $res"
    if in_ct pgrep -u edge-agent >/dev/null; then fail "processes of edge-agent left after the stop: $(in_ct pgrep -a -u edge-agent)"; fi
    check "clean stop: exit 0, result success, no process of the service user left"
    in_ct journalctl -u edge-agent --no-pager >"$LOGDIR/systemd-journal.txt" 2>&1 || true
    say "journal of the unit: $LOGDIR/systemd-journal.txt"
}
