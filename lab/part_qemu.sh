# shellcheck shell=bash
# Parts "i2c", "powercut" and "soak": a Debian 12 disk image booted by qemu-system-x86_64 under TCG with Debian's own
# kernel (linux-image-amd64): real i2c-stub and i2c-dev modules, a real ext4 on a virtio disk, cgroup v2, and a qemu
# that can be killed (a power cut). The guest reports on its serial console (lab/guest/edgelab.py). The broker runs
# on the host's loopback; the guest reaches it only through qemu's user network with restrict=on and one guestfwd
# (10.0.2.100:1883 -> the lab broker), so it can reach nothing else. Sourced by lab/field.sh.

GUEST_PKGS="systemd,systemd-sysv,dbus,udev,kmod,linux-image-amd64,initramfs-tools,python3-venv,i2c-tools,ca-certificates,procps,e2fsprogs,iproute2"
QEMU_MEM="${QEMU_MEM:-1536}"

# qemu_prepare NAME: a fresh guest root at $CACHE/run/NAME/root with the project installed from a fresh clone by
# install.sh (--no-start) and the lab's units; the caller writes the config and enables what the part needs, then
# calls qemu_disk. Sets QROOT and QRUN.
qemu_prepare() {
    local name="$1" base
    need_host_packages debootstrap systemd-container qemu-system-x86 qemu-utils socat mosquitto mosquitto-clients e2fsprogs
    command -v qemu-system-x86_64 >/dev/null || cannot "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
    base=$(build_root "guest-amd64" amd64 "$GUEST_PKGS")
    ls "$base"/boot/vmlinuz-* >/dev/null 2>&1 || die "no kernel in $base/boot"
    # the project installed into the guest root once per commit (and lab version); the parts copy it
    local key installed
    key="$(git -C "$REPO" rev-parse HEAD)-$(cat "$HERE"/guest/*.py "$HERE"/guest/*.service "$HERE/part_qemu.sh" | sha256sum | cut -c1-12)"
    installed="$CACHE/prepared/guest-$key"
    if [ ! -f "$installed/.lab-prepared" ]; then
        rm -rf "$CACHE/prepared"; mkdir -p "$CACHE/prepared"
        cp -a "$base" "$installed"
        qemu_install "$installed" "$name"
        touch "$installed/.lab-prepared"
    else
        echo "[lab] guest root with this commit installed: $installed" >&2
    fi
    QRUN="$CACHE/run/$name"
    QROOT="$QRUN/root"
    rm -rf "$QRUN"; mkdir -p "$QRUN"
    on_cleanup "rm -rf '$QRUN'"
    say "fresh copy of the installed guest root into $QROOT"
    cp -a "$installed" "$QROOT"
}

# qemu_install ROOT NAME: the fresh clone installed into ROOT by install.sh --no-start, the lab's units and files
qemu_install() {
    local root="$1" name="$2" binds=() d
    while read -r d; do binds+=("--bind-ro=$d"); done < <(copy_pip_config "$root")
    mkdir -p "$CACHE/pip/amd64"
    binds+=("--bind=$CACHE/pip/amd64:/root/.cache/pip")
    fresh_clone "$root/root/edge-agent"
    mkdir -p "$root/usr/local/lib/edgelab" "$root/etc/edge-agent"
    install -m 0755 "$HERE/guest/edgelab.py" "$root/usr/local/lib/edgelab/edgelab.py"
    local u
    for u in check final i2c soak; do
        install -m 0644 "$HERE/guest/edgelab-$u.service" "$root/etc/systemd/system/edgelab-$u.service"
    done
    # network: a static address on qemu's user network (no DHCP wait); the broker is 10.0.2.100
    mkdir -p "$root/etc/systemd/network"
    printf '[Match]\nName=eth0\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\n' >"$root/etc/systemd/network/10-lab.network"
    printf '/dev/vda / ext4 defaults 0 1\n' >"$root/etc/fstab"
    # the agent's log on the serial console too: the host's only window into the guest
    mkdir -p "$root/etc/systemd/system/edge-agent.service.d"
    # Numba's cache is keyed by the CPU it compiled for; qemu's TCG CPU is not this machine's, and compiling every
    # kernel under TCG takes many minutes. So the lab warms a portable cache (generic x86-64) here and the guest
    # uses it. On a real device the cache is compiled on the device itself.
    printf '[Service]\nStandardOutput=journal+console\nStandardError=journal+console\nEnvironment=NUMBA_CPU_NAME=generic\n' \
        >"$root/etc/systemd/system/edge-agent.service.d/lab-console.conf"
    say "install.sh --no-start in the guest root (pip into /opt/edge-agent/venv, warmup; log $LOGDIR/$name-install.log)"
    local pipenv=() v
    while IFS= read -r v; do pipenv+=("--setenv=$v"); done < <(env | grep -E '^PIP_[A-Z_]+=' || true)
    if ! systemd-nspawn -q --register=no --keep-unit -D "$root" "${binds[@]}" "${pipenv[@]}" --setenv=NUMBA_CPU_NAME=generic \
            bash -c 'bash /root/edge-agent/systemd/install.sh --no-start && systemctl enable systemd-networkd edgelab-check edgelab-final edgelab-i2c edgelab-soak' \
            </dev/null >"$LOGDIR/$name-install.log" 2>&1; then
        tail -n 30 "$LOGDIR/$name-install.log" >&2; fail "install.sh in the guest root failed"
    fi
    rm -rf "$root/root/.cache"
}

# qemu_disk: the root as an ext4 disk image ($QRUN/disk.raw)
qemu_disk() {
    rm -rf "$QROOT/root/.cache" "$QROOT/var/cache/apt/"*.bin
    mkfs.ext4 -q -F -L edgelab -d "$QROOT" "$QRUN/disk.raw" 4G >"$LOGDIR/mkfs.log" 2>&1 || { cat "$LOGDIR/mkfs.log" >&2; fail "mkfs.ext4 -d failed"; }
    QKERNEL=$(ls "$QROOT"/boot/vmlinuz-* | sort -V | tail -n 1)
    QINITRD=$(ls "$QROOT"/boot/initrd.img-* | sort -V | tail -n 1)
}

# host_broker: a mosquitto on a free loopback port for the guest (BROKER_PORT, BROKER_PID)
host_broker() {
    BROKER_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n' "$BROKER_PORT" >"$QRUN/mosquitto.conf"
    mosquitto -c "$QRUN/mosquitto.conf" >"$LOGDIR/mosquitto.log" 2>&1 &
    BROKER_PID=$!
    on_cleanup "kill $BROKER_PID 2>/dev/null || true"
    wait_for 30 "the lab broker listens on $BROKER_PORT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$BROKER_PORT"
}

# qemu_boot MODE LOG: boot the disk in the background (QEMU_PID); the kernel command line carries edgelab=MODE
qemu_boot() {
    local mode="$1" log="$2" extra="${3:-}"
    local net="user,id=n0,restrict=on"
    [ -n "${BROKER_PORT:-}" ] && net="$net,guestfwd=tcp:10.0.2.100:1883-cmd:socat STDIO TCP:127.0.0.1:$BROKER_PORT"
    qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m "$QEMU_MEM" -display none -no-reboot -nodefaults \
        -serial "file:$log" -kernel "$QKERNEL" -initrd "$QINITRD" \
        -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 edgelab=$mode systemd.show_status=0 $extra" \
        -drive "file=$QRUN/disk.raw,format=raw,if=virtio" \
        -netdev "$net" -device virtio-net-pci,netdev=n0 -device virtio-rng-pci \
        </dev/null >>"$log.qemu" 2>&1 &
    QEMU_PID=$!
    on_cleanup "kill -KILL $QEMU_PID 2>/dev/null || true"
}
console_has() { grep -qE -- "$2" "$1" 2>/dev/null; }
qemu_gone() { ! kill -0 "$QEMU_PID" 2>/dev/null; }
# edgelab_line LOG TAG: the JSON of the guest's last `EDGELAB TAG` line
edgelab_line() { grep -a "EDGELAB $2 " "$1" | tail -n 1 | sed "s/.*EDGELAB $2 //" | tr -d '\r'; }

part_i2c() {
    qemu_prepare qemu-i2c
    qemu_disk
    local log="$LOGDIR/i2c-console.log"
    say "booting Debian's kernel $(basename "$QKERNEL") under TCG (console $log)"
    qemu_boot i2c "$log"
    wait_for 900 "the guest's i2c report" console_has "$log" 'EDGELAB i2c '
    wait_for 300 "the guest powered off" qemu_gone
    edgelab_line "$log" i2c >"$LOGDIR/i2c.json"
    python3 - "$LOGDIR/i2c.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
def bad(msg):
    print(f"[lab]   FAILED: {msg}\n{json.dumps(r, indent=1)}", file=sys.stderr); sys.exit(1)
if "error" in r: bad(f"guest: {r['error']}")
print(f"[lab]   kernel {r['uname']}, i2c-stub on /dev/i2c-{r['bus']}")
read, exp = r.get("read") or bad(f"no readings (rc {r.get('rc')}): {r.get('stderr')}"), r["expected"]
bme = read.get("bme", {})
if "error" in bme: bad(f"bme280 at 0x76: {bme['error']}")
for ch, tol in (("temperature", 0.01), ("pressure", 0.01), ("humidity", 0.05)):
    got = bme[f"bme.{ch}"][0]
    if got is None or abs(got - exp[ch]) > tol:
        bad(f"bme280 {ch}: read {got}, the data sheet's formula gives {exp[ch]:.4f}")
    print(f"[lab]   ok: bme280 {ch} {got} (data sheet {exp[ch]:.4f})")
# the BMP280 data sheet's own worked example: 25.08 degC and 100653.27 Pa
if abs(bme["bme.temperature"][0] - 25.08) > 0.005 or abs(bme["bme.pressure"][0] * 100 - 100653.27) > 0.5:
    bad("the worked example of the data sheet (25.08 degC, 100653.27 Pa) was not reproduced")
print("[lab]   ok: the data sheet's worked example: 25.08 degC, 1006.5327 hPa")
absent = read.get("absent", {})
txt = json.dumps(absent)
# the real kernel answers ENODEV (i2c-stub) or EREMOTEIO/ENXIO (a real adapter): each channel bad, naming bus,
# address, register and errno
if not absent or "error" in absent or any(v[1] != "bad" or "0x77" not in (v[2] or "") or "errno" not in (v[2] or "").lower()
                                         for v in absent.values()):
    bad(f"absent address 0x77: expected every channel bad with an error naming the address and the errno, got {txt}")
print(f"[lab]   ok: absent 0x77: {txt[:220]}")
# i2c-stub is a byte-addressed register file: a two-byte block read at register r returns the low bytes of r and
# r+1, so the INA219's 16-bit registers (and its reset bit) cannot be imaged in it. The driver must refuse it
# clearly rather than decode garbage.
ina = json.dumps(read.get("ina"))
print(f"[lab]   ina219 at 0x40 (i2c-stub cannot model its 16-bit registers): {ina[:300]}")
if "WrongDevice" not in ina and "error" not in ina:
    bad(f"ina219 on i2c-stub: expected a clear refusal, got {ina}")
PY
}

POWERCUT_CONFIG='[agent]
id = "lab"

[mqtt]
url = "mqtt://10.0.2.100:1883"
prefix = "edge"

[[sensors]]
name = "oil_temperature"
driver = "emulated.temperature"
interval_s = 0.1

[[sensors]]
name = "bearing_temperature"
driver = "emulated.temperature"
interval_s = 0.25
'

part_powercut() {
    local rounds="${POWERCUT_ROUNDS:-10}" seed="${POWERCUT_SEED:-$RANDOM}"
    RANDOM=$seed
    qemu_prepare qemu-powercut
    printf '%s' "$POWERCUT_CONFIG" >"$QROOT/etc/edge-agent/agent.toml"
    systemd-nspawn -q --register=no --keep-unit -D "$QROOT" bash -c 'chown root:edge-agent /etc/edge-agent/agent.toml && chmod 0640 /etc/edge-agent/agent.toml && /opt/edge-agent/venv/bin/edge-agent config check /etc/edge-agent/agent.toml && systemctl enable edge-agent' \
        >"$LOGDIR/powercut-enable.log" 2>&1 || { cat "$LOGDIR/powercut-enable.log" >&2; fail "config check / enable in the guest root failed"; }
    qemu_disk
    host_broker
    local recv="$LOGDIR/powercut-received.txt"
    mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -q 1 -t 'edge/#' -v -i lab-recorder >"$recv" 2>"$LOGDIR/powercut-sub.err" &
    local sub=$!
    on_cleanup "kill $sub 2>/dev/null || true"
    say "power cut x$rounds (seed $seed): boot, wait for the agent to publish, kill qemu at a random moment"
    : >"$LOGDIR/powercut-boots.txt"
    local i log seen delay
    for i in $(seq 1 "$rounds"); do
        log="$LOGDIR/powercut-$i.console.log"
        qemu_boot powercut "$log"
        wait_for 900 "boot $i: the outbox check before the agent starts" console_has "$log" 'EDGELAB check '
        seen=$(wc -l <"$recv")
        echo "$i $seen $(edgelab_line "$log" check)" >>"$LOGDIR/powercut-boots.txt"
        wait_for 900 "boot $i: the agent publishes" bash -c "[ \$(wc -l <'$recv') -ge $(( seen + 20 )) ]"
        delay=$(( RANDOM % 25 + 1 ))
        sleep "$delay"
        kill -KILL "$QEMU_PID"
        wait "$QEMU_PID" 2>/dev/null || true
        say "cut $i: qemu killed ${delay}s after the agent published; broker has $(wc -l <"$recv") messages"
    done
    log="$LOGDIR/powercut-final.console.log"
    qemu_boot final "$log"
    wait_for 900 "final boot: the outbox check" console_has "$log" 'EDGELAB check '
    seen=$(wc -l <"$recv")
    echo "final $seen $(edgelab_line "$log" check)" >>"$LOGDIR/powercut-boots.txt"
    wait_for 1200 "final boot: drained, stopped, exported" console_has "$log" 'EDGELAB final '
    wait_for 300 "the guest powered off" qemu_gone
    sleep 3
    kill "$sub" 2>/dev/null || true
    edgelab_line "$log" final >"$LOGDIR/powercut-final.json"
    python3 "$HERE/account.py" "$recv" "$LOGDIR/powercut-boots.txt" "$LOGDIR/powercut-final.json"
}

part_soak() {
    local secs="${SOAK_SECONDS:-600}"
    qemu_prepare qemu-soak
    host_broker
    # the shipped plant config, its broker the lab's
    sed 's|^url = "mqtt://localhost:1883"|url = "mqtt://10.0.2.100:1883"|' "$REPO/examples/plant.toml" >"$QROOT/etc/edge-agent/agent.toml"
    systemd-nspawn -q --register=no --keep-unit -D "$QROOT" bash -c 'chown root:edge-agent /etc/edge-agent/agent.toml && chmod 0640 /etc/edge-agent/agent.toml && /opt/edge-agent/venv/bin/edge-agent config check /etc/edge-agent/agent.toml && systemctl enable edge-agent' \
        >"$LOGDIR/soak-enable.log" 2>&1 || { cat "$LOGDIR/soak-enable.log" >&2; fail "config check / enable in the guest root failed"; }
    qemu_disk
    local recv="$LOGDIR/soak-received.txt" log="$LOGDIR/soak-console.log"
    mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -q 1 -t 'edge/#' -v >"$recv" 2>/dev/null &
    local sub=$!
    on_cleanup "kill $sub 2>/dev/null || true"
    say "examples/plant.toml under the unit's MemoryMax for ${secs}s in the guest (console $log)"
    qemu_boot soak "$log" "edgelab.soak=$secs"
    wait_for $(( secs + 1200 )) "the guest's soak report" console_has "$log" 'EDGELAB soak '
    wait_for 300 "the guest powered off" qemu_gone
    kill "$sub" 2>/dev/null || true
    edgelab_line "$log" soak >"$LOGDIR/soak.json"
    python3 - "$LOGDIR/soak.json" "$recv" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n = sum(1 for _ in open(sys.argv[2], errors="replace"))
ev, unit = r["memory_events"], dict(kv.split("=", 1) for kv in r["unit"])
peak = max((s["peak"] or s["current"] or 0) for s in r["samples"]) if r["samples"] else None
print(f"[lab]   cgroup v2: {r['cgroup2']}; memory.max {r['memory_max']}; peak {peak and peak / 2**20:.0f} MiB; "
      f"memory.events {ev}; unit {unit}; {n} messages on the broker")
bad = []
if not r["cgroup2"]: bad.append("not cgroup v2")
if r["memory_max"] in (None, "max"): bad.append("MemoryMax not applied to the unit's cgroup")
if ev.get("oom_kill", 0) or ev.get("oom", 0) or ev.get("max", 0): bad.append(f"hit MemoryMax: {ev}")
if ev.get("high", 0): bad.append(f"throttled at MemoryHigh: high={ev['high']}")
if unit.get("NRestarts") != "0" or unit.get("ActiveState") != "active": bad.append(f"unit {unit}")
if n < 100: bad.append(f"only {n} messages reached the broker")
for b in bad: print(f"[lab]   FAILED: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}
