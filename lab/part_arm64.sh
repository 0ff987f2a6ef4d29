# shellcheck shell=bash
# Part "arm64": a Raspberry Pi OS-like arm64 userland (Debian 12 arm64 packages) run on this x86_64 machine through
# qemu-user-static and binfmt_misc: the project and its arm64 wheels installed, `edge-agent warmup`, an emulated run
# publishing to a broker, and a representative subset of the tests. Sourced by lab/field.sh.
#
# What is native and what is emulated, so the part fits in CI (~6 min cold instead of ~35):
# * the root is unpacked, not bootstrapped (mmdebstrap --variant=extract: no maintainer script runs under emulation);
# * pip resolves and unpacks the aarch64 wheels on the host (`pip install --platform ..._aarch64 --only-binary=:all:
#   --target`): the same resolver, index and wheels a Pi's pip would take, minus 6-7 minutes of emulated pip. A
#   dependency without an aarch64 wheel fails here, as it would make a Pi compile from source;
# * everything of the agent runs as arm64 code: CPython 3.11 from Debian's arm64 packages, numpy, llvmlite (Numba's
#   AArch64 code generation), SQLite, the drivers. The broker is the host's mosquitto (the root shares the network).

# Debian's arm64 python3 and what the wheels link against (libstdc++ for llvmlite); the tools the inner script uses
ARM64_PKGS="bash,coreutils,sed,grep,findutils,procps,base-files,python3,python3-venv,libstdc++6,zlib1g"
# numba kernels, the outbox, the config and the HAL's drivers: what differs by architecture (JIT code generation,
# SQLite, struct layouts). Emulated, scalar JIT code runs 17-40x slower: keep it to these.
ARM64_TESTS="${ARM64_TESTS:-tests/agent/test_config.py tests/agent/test_outbox.py tests/agent/signal/test_signal_time.py tests/agent/signal/test_signal_spectrum.py tests/hal/test_i2c_drivers.py}"
# the test extra's parts the subset needs (scipy is the signal tests' oracle)
ARM64_TEST_DEPS="pytest pytest-timeout hypothesis scipy"
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

# in_arm64 ROOT CMD...: run CMD in the arm64 root (own /dev with /dev/pts: the emulated RTU bus opens a pty)
in_arm64() {
    local root="$1"; shift
    systemd-nspawn -q --register=no --keep-unit -D "$root" --setenv=NUMBA_CACHE_DIR=/var/cache/ea-numba \
        --setenv=CI="${CI:-}" --setenv=LANG=C.UTF-8 --setenv=HOME=/root "$@" 2> >(grep -v 'propagate' >&2)
}

part_arm64() {
    need_host_packages mmdebstrap systemd-container qemu-user-static mosquitto mosquitto-clients
    binfmt_setup
    local base run root port m pip t0
    base=$(extract_root "arm64-extract" arm64 "$ARM64_PKGS")
    m=$(in_arm64 "$base" /bin/uname -m 2>"$LOGDIR/arm64-uname.err" | tr -d "\r" || true)
    if [ "$m" != aarch64 ]; then
        echo "[lab] uname -m in the arm64 root printed '$m'; $(head -n 5 "$LOGDIR/arm64-uname.err")" >&2
        cat /proc/sys/fs/binfmt_misc/"$BINFMT_NAME" >&2 2>/dev/null || echo "[lab] no binfmt entry $BINFMT_NAME" >&2
        cannot "an arm64 binary does not run here through binfmt_misc + qemu-aarch64-static"
    fi
    check "arm64 userland runs: uname -m = aarch64 (qemu-user), $(in_arm64 "$base" /usr/bin/python3 --version)"
    run="$CACHE/run/arm64"; root="$run/root"
    rm -rf "$run"; mkdir -p "$run"
    on_cleanup "rm -rf '$run'"
    say "fresh copy of the arm64 root into $root"
    cp -a "$base" "$root"
    fresh_clone "$root/root/edge-agent"

    # -- install: a venv of the root's arm64 python; the project's wheel and its aarch64 dependencies into it ---------
    t0=$(date +%s)
    in_arm64 "$root" /usr/bin/python3 -m venv --without-pip /opt/ea || fail "python3 -m venv in the arm64 root failed"
    local site
    site=$(in_arm64 "$root" /opt/ea/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))' | tr -d '\r')
    [ -d "$root$site" ] || fail "no site-packages $site in the arm64 venv"
    pip=$(host_pip)
    mkdir -p "$run/wheel" "$CACHE/pip/host"
    $pip wheel -q --no-deps --cache-dir "$CACHE/pip/host" -w "$run/wheel" "$root/root/edge-agent" \
        >"$LOGDIR/arm64-pip.log" 2>&1 || { tail -n 20 "$LOGDIR/arm64-pip.log" >&2; fail "building the project's wheel failed"; }
    # shellcheck disable=SC2086  # $pip is "python -m pip"; the dependency list is words
    if ! $pip install -q --cache-dir "$CACHE/pip/host" --no-compile --target "$root$site" --only-binary=:all: \
            --implementation cp --python-version 3.11 --abi cp311 \
            --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
            "$run"/wheel/edge_agent-*.whl $ARM64_TEST_DEPS >>"$LOGDIR/arm64-pip.log" 2>&1; then
        tail -n 20 "$LOGDIR/arm64-pip.log" >&2
        fail "pip found no aarch64 wheel for a dependency (a Pi would have to compile it; log $LOGDIR/arm64-pip.log)"
    fi
    # --target writes console scripts for the host's python: the arm64 venv gets its own
    rm -rf "${root:?}$site/bin"
    printf '#!/opt/ea/bin/python\nimport sys\nfrom agent.cli import main\nsys.exit(main())\n' >"$root/opt/ea/bin/edge-agent"
    chmod 755 "$root/opt/ea/bin/edge-agent"
    check "installed in $(( $(date +%s) - t0 ))s: $(in_arm64 "$root" /opt/ea/bin/edge-agent version | tr -d '\r'); numpy $(in_arm64 "$root" /opt/ea/bin/python -c 'import numpy, numba, platform; print(numpy.__version__, "numba", numba.__version__, platform.machine())' | tr -d '\r')"

    # -- warmup: Numba compiles every kernel for AArch64 into the cache (emulated: ~1.5 min) --------------------------
    t0=$(date +%s)
    in_arm64 "$root" /opt/ea/bin/edge-agent warmup >"$LOGDIR/arm64-warmup.log" 2>&1 \
        || { tail -n 20 "$LOGDIR/arm64-warmup.log" >&2; fail "edge-agent warmup failed in the arm64 root"; }
    check "edge-agent warmup $(( $(date +%s) - t0 ))s: $(tail -n 1 "$LOGDIR/arm64-warmup.log")"
    t0=$(date +%s)
    in_arm64 "$root" /opt/ea/bin/edge-agent warmup >"$LOGDIR/arm64-warmup2.log" 2>&1 || fail "second warmup failed"
    grep -q 'compiled and cached' "$LOGDIR/arm64-warmup2.log" && fail "the second warmup compiled again: the cache was not used ($LOGDIR/arm64-warmup2.log)"
    check "second warmup $(( $(date +%s) - t0 ))s, every kernel from the cache"

    # -- an emulated run publishing to a broker on the host -------------------------------------------------------
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n' "$port" >"$run/mosquitto.conf"
    mosquitto -c "$run/mosquitto.conf" >"$LOGDIR/arm64-mosquitto.log" 2>&1 &
    local mq=$!
    on_cleanup "kill $mq 2>/dev/null || true"
    wait_for 30 "the lab's broker listens on $port" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
    # (not under /tmp: systemd-nspawn mounts a fresh tmpfs there)
    local lab="$root/root/lab"
    mkdir -p "$lab"
    sed "s|mqtt://localhost:1883|mqtt://localhost:$port|" "$root/root/edge-agent/systemd/agent.toml.starter" \
        >"$lab/agent.toml"
    cat >"$lab/run.sh" <<'IN'
/opt/ea/bin/edge-agent run --config /root/lab/agent.toml --state-dir /root/lab/state >/root/lab/agent.log 2>&1 &
ag=$!
while [ ! -e /root/lab/stop ] && kill -0 $ag 2>/dev/null; do sleep 1; done
kill -TERM $ag 2>/dev/null; rc=0; wait $ag || rc=$?
echo "agent exit $rc"
exit $rc
IN
    t0=$(date +%s)
    timeout 320 mosquitto_sub -h 127.0.0.1 -p "$port" -t 'edge/#' -C 5 -W 300 -v >"$run/received.txt" 2>/dev/null &
    local sub=$!
    on_cleanup "kill $sub 2>/dev/null || true"
    in_arm64 "$root" /bin/bash /root/lab/run.sh >"$LOGDIR/arm64-run.log" 2>&1 &
    local runner=$!
    on_cleanup "touch '$lab/stop'; kill $runner 2>/dev/null || true"
    # until 5 messages arrived, or the agent (or the subscriber's 300 s) ended
    while kill -0 "$sub" 2>/dev/null && kill -0 "$runner" 2>/dev/null; do sleep 1; done
    local n dt=$(( $(date +%s) - t0 ))
    touch "$lab/stop"
    local rc=0
    wait "$runner" || rc=$?
    kill "$sub" 2>/dev/null || true
    n=$(wc -l <"$run/received.txt")
    if [ "$n" -lt 5 ]; then
        cat "$LOGDIR/arm64-run.log" >&2; tail -n 30 "$lab/agent.log" >&2
        fail "the emulated run on arm64 published $n messages in ${dt}s (wanted 5)"
    fi
    [ "$rc" -eq 0 ] || { tail -n 30 "$lab/agent.log" >&2; fail "the agent exited with $rc after SIGTERM (wanted 0)"; }
    check "emulated run on arm64: $n messages within ${dt}s of the start, first: $(head -n 1 "$run/received.txt" | cut -c1-120); SIGTERM: exit 0"
    kill "$mq" 2>/dev/null || true

    # -- the tests of what differs by architecture --------------------------------------------------------------
    t0=$(date +%s)
    # the suite's per-test timeout (120 s) is for native speed: one first compile takes ~90 s emulated
    # shellcheck disable=SC2086
    if ! in_arm64 "$root" --chdir=/root/edge-agent /opt/ea/bin/python -m pytest -q -p no:cacheprovider \
            --timeout=1800 $ARM64_TESTS >"$LOGDIR/arm64-tests.log" 2>&1; then
        tail -n 40 "$LOGDIR/arm64-tests.log" >&2; fail "tests failed in the arm64 root (log $LOGDIR/arm64-tests.log)"
    fi
    check "tests on arm64 in $(( $(date +%s) - t0 ))s: $(tail -n 1 "$LOGDIR/arm64-tests.log")"
}
