# shellcheck shell=bash
# Part "arm64": a Raspberry Pi OS-like arm64 userland (debootstrap --arch=arm64) run on this x86_64 machine through
# qemu-user-static and binfmt_misc: install from a fresh clone, `edge-agent warmup`, an emulated run publishing to a
# broker inside the root, and a representative subset of the tests. systemd-nspawn (not booted) gives the root its
# own /dev with /dev/pts (the emulated RTU bus opens a pty). Sourced by lab/field.sh.

ARM64_PKGS="python3-venv,mosquitto,mosquitto-clients,ca-certificates,procps,socat"
# numba kernels, the outbox, the config and the HAL's drivers: what differs by architecture (JIT code generation,
# SQLite, struct layouts). Emulated, scalar JIT code runs 17-40x slower: keep it to these.
ARM64_TESTS="${ARM64_TESTS:-tests/test_config.py tests/test_outbox.py tests/signal/test_signal_time.py tests/signal/test_signal_spectrum.py tests/hal/test_i2c_drivers.py}"
BINFMT_NAME=edgelab-aarch64

# binfmt_setup: run aarch64 ELF binaries through qemu-aarch64-static; undone at exit (only what the lab added)
binfmt_setup() {
    local dir=/proc/sys/fs/binfmt_misc
    if ! mountpoint -q "$dir"; then
        mount -t binfmt_misc binfmt_misc "$dir" || cannot "cannot mount binfmt_misc (not permitted in this container?)"
        on_cleanup "umount $dir"
    fi
    if [ -e "$dir/qemu-aarch64" ] && grep -q '^enabled' "$dir/qemu-aarch64"; then
        echo "[lab]   binfmt: the host's qemu-aarch64 entry is already registered; using it"
        return 0
    fi
    local f=/usr/share/binfmts/qemu-aarch64 magic mask
    [ -f "$f" ] || cannot "no $f (apt-get install qemu-user-static)"
    magic=$(awk '$1 == "magic" {print $2}' "$f"); mask=$(awk '$1 == "mask" {print $2}' "$f")
    [ -e "$dir/$BINFMT_NAME" ] && echo -1 >"$dir/$BINFMT_NAME"
    # F: the interpreter is opened now, so it works inside any root without being copied there
    echo ":$BINFMT_NAME:M::$magic:$mask:/usr/bin/qemu-aarch64-static:F" >"$dir/register" \
        || cannot "cannot register a binfmt_misc entry"
    on_cleanup "[ -e $dir/$BINFMT_NAME ] && echo -1 > $dir/$BINFMT_NAME"
}

part_arm64() {
    need_host_packages debootstrap systemd-container qemu-user-static
    binfmt_setup
    local base run root port binds=() d
    base=$(build_root "arm64" arm64 "$ARM64_PKGS")
    local m
    m=$(systemd-nspawn -q --register=no --keep-unit -D "$base" uname -m 2>"$LOGDIR/arm64-uname.err" | tr -d "\r" || true)
    if [ "$m" != aarch64 ]; then
        echo "[lab] uname -m in the arm64 root printed '$m'; $(grep -v 'propagate' "$LOGDIR/arm64-uname.err" | head -n 5)" >&2
        cat /proc/sys/fs/binfmt_misc/"$BINFMT_NAME" >&2 2>/dev/null || echo "[lab] no binfmt entry $BINFMT_NAME" >&2
        cannot "an arm64 binary does not run here through binfmt_misc + qemu-aarch64-static"
    fi
    check "arm64 userland runs: uname -m = aarch64 (qemu-user)"
    run="$CACHE/run/arm64"; root="$run/root"
    rm -rf "$run"; mkdir -p "$run"
    on_cleanup "rm -rf '$run'"
    say "fresh copy of the arm64 root into $root"
    cp -a "$base" "$root"
    while read -r d; do binds+=("--bind-ro=$d"); done < <(copy_pip_config "$root")
    mkdir -p "$CACHE/pip/arm64"
    binds+=("--bind=$CACHE/pip/arm64:/root/.cache/pip")
    fresh_clone "$root/root/edge-agent"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    local pipenv=() v
    while IFS= read -r v; do pipenv+=("--setenv=$v"); done < <(env | grep -E '^PIP_[A-Z_]+=' || true)
    cat >"$root/root/lab-arm64.sh" <<IN
set -eu
cd /root/edge-agent
t() { date +%s; }
echo "arch: \$(uname -m), \$(python3 --version)"
t0=\$(t)
python3 -m venv /opt/ea
/opt/ea/bin/python -m pip install -q --upgrade pip
/opt/ea/bin/python -m pip install -q '.[test]'
/opt/ea/bin/python -m pip install -q --no-deps 'pysparkplug==0.6.1'
echo "LAB install \$(( \$(t) - t0 ))s: \$(/opt/ea/bin/edge-agent version)"
export NUMBA_CACHE_DIR=/var/cache/ea-numba
t0=\$(t)
/opt/ea/bin/edge-agent warmup
echo "LAB warmup \$(( \$(t) - t0 ))s"
t0=\$(t)
/opt/ea/bin/edge-agent warmup >/dev/null
echo "LAB warmup-again \$(( \$(t) - t0 ))s"
mosquitto -p $port >/tmp/mosquitto.log 2>&1 &
mq=\$!
sed 's|mqtt://localhost:1883|mqtt://localhost:$port|' systemd/agent.toml.starter >/tmp/agent.toml
/opt/ea/bin/edge-agent run --config /tmp/agent.toml --state-dir /tmp/state >/tmp/agent.log 2>&1 &
ag=\$!
t0=\$(t)
n=\$(timeout 600 mosquitto_sub -p $port -t 'edge/#' -C 5 -W 590 -v | tee /tmp/received.txt | wc -l || true)
echo "LAB published \$n messages within \$(( \$(t) - t0 ))s of the start; first: \$(head -c 160 /tmp/received.txt)"
kill -TERM \$ag; rc=0; wait \$ag || rc=\$?
echo "LAB agent-exit \$rc"
kill \$mq || true
[ "\$n" -ge 5 ] || { tail -n 30 /tmp/agent.log; exit 1; }
[ "\$rc" -eq 0 ] || { tail -n 30 /tmp/agent.log; exit 1; }
t0=\$(t)
# the suite's per-test timeout (120 s) is for native speed: one first compile takes 86 s emulated
/opt/ea/bin/python -m pytest -q -p no:cacheprovider --timeout=1800 $ARM64_TESTS
echo "LAB tests \$(( \$(t) - t0 ))s"
IN
    say "install, warmup, emulated run, tests inside the arm64 root (log $LOGDIR/arm64.log)"
    if ! systemd-nspawn -q --register=no --keep-unit -D "$root" "${binds[@]}" "${pipenv[@]}" --setenv=CI="${CI:-}" \
            bash /root/lab-arm64.sh </dev/null >"$LOGDIR/arm64.log" 2>&1; then
        tail -n 40 "$LOGDIR/arm64.log" >&2; fail "arm64 run failed (log $LOGDIR/arm64.log)"
    fi
    grep -E '^LAB |^arch:| passed| failed' "$LOGDIR/arm64.log" | sed 's/^/[lab]   /'
}
