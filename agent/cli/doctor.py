"""`edge-agent doctor`: one line per check with a fix hint; exit 1 when any check fails.

Checks, in the order a technician would look: the configuration; the service; every configured bus (device node
present, permitted to the service user through its groups; Modbus TCP reachable); every configured device answers
(the driver opened through the HAL and read once, with a timeout); the broker (TCP, TLS handshake, MQTT CONNECT with
the configured credentials); the clock; disk space and outbox health; the Numba cache; Raspberry Pi throttling,
under-voltage and SoC temperature where the platform exposes them.

While the service is running it owns the hardware (a serial port cannot be opened twice): doctor then asks the
service how each sensor is doing instead of opening the drivers itself (`--probe` opens them anyway).
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import socket
import ssl
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.cli.common import CliError, add_diag_args, find_service, open_outbox, state_dir_for, with_errors
from agent.config import DEFAULT_CONFIG_PATH, Config, OutboxConfig
from agent.errors import ConfigError

SERVICE_USER = "edge-agent"
OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"


@dataclass
class Check:
    status: str
    name: str
    message: str
    hint: str = ""


class Doctor:
    def __init__(self, args: argparse.Namespace, *, context: Any = None) -> None:
        """`context`: the HalContext to open drivers in (default: a new one from the config's buses)."""
        self.args = args
        self.context = context
        self.user = getattr(args, "service_user", None) or SERVICE_USER
        self.timeout = args.timeout
        self.results: list[Check] = []
        self.config: Config | None = None
        self.status_doc: dict[str, Any] | None = None

    def add(self, status: str, name: str, message: str, hint: str = "") -> None:
        c = Check(status, name, message, hint)
        self.results.append(c)
        if not self.args.json:
            mark = {OK: "[ ok ]", WARN: "[warn]", FAIL: "[FAIL]", SKIP: "[skip]"}[status]
            line = f"{mark} {name}: {message}"
            if hint and status in (FAIL, WARN):
                line += f"\n       fix: {hint}"
            print(line, flush=True)

    # -- the checks -------------------------------------------------------------------------------------------

    def check_config(self) -> None:
        from agent.config import load, load_demo
        path = self.args.config or (str(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.exists() else None)
        try:
            self.config = load(path, emulate=self.args.emulate) if path else load_demo(emulate=True)
        except ConfigError as e:
            first = e.problems[0] if e.problems else str(e)
            more = f" (+{len(e.problems) - 1} more)" if len(e.problems) > 1 else ""
            self.add(FAIL, "config", f"{first}{more}", f"edge-agent config check {path or ''}".rstrip()
                     + " lists every problem; fix them and `sudo systemctl reload edge-agent`")
            return
        c = self.config
        note = " (the built-in emulated demo: no config file)" if not path else ""
        self.add(OK, "config", f"{c.source} valid{note}: agent {c.agent.id}, {len(c.sensors)} sensors, "
                               f"{len(c.buses)} buses, broker {c.mqtt.broker.url}")

    def check_service(self, state_dir: Path) -> None:
        try:
            path, doc = find_service(self.args, state_dir)
        except CliError as e:
            self.add(WARN, "service", str(e))
            return
        if doc is None:
            self.add(WARN, "service", "not running (no status socket answered)",
                     "sudo systemctl status edge-agent; journalctl -u edge-agent -n 50")
            return
        self.status_doc = doc
        if doc.get("stalled"):
            self.add(FAIL, "service", f"running but STALLED: {', '.join(doc['stalled'])} (the watchdog will "
                                      "restart it)", "journalctl -u edge-agent -n 100 shows the stuck stage's last "
                                                     "errors")
            return
        self.add(OK, "service", f"running for {doc.get('uptime_s', 0):.0f} s, pid {doc.get('pid')} ({path})")

    def check_buses(self) -> None:
        c = self.config
        if c is None:
            return
        if not c.buses:
            self.add(SKIP, "buses", "none configured")
        for name, bus in c.buses.items():
            kind, backend = bus.get("type"), bus.get("backend", "real")
            label = f"bus {name}"
            if backend == "emulated" or c.emulate:
                self.add(OK, label, f"{kind}, emulated backend")
                continue
            if kind == "i2c":
                self._device_node(label, Path(f"/dev/i2c-{bus.get('bus', 1)}"), "i2c",
                                  "enable I2C: sudo raspi-config nonint do_i2c 0 (or dtparam=i2c_arm=on in "
                                  "/boot/firmware/config.txt), then reboot")
            elif kind in ("serial", "modbus_rtu"):
                port = bus.get("port") or ""
                if not port:
                    self.add(FAIL, label, "no port configured", f"set buses.{name}.port, e.g. /dev/ttyUSB0")
                else:
                    self._device_node(label, Path(port), "dialout",
                                      "plug in the adapter; `ls -l /dev/serial/by-id/` lists what is connected "
                                      "(use that stable path in the config)")
            elif kind == "gpio":
                chips = sorted(Path("/dev").glob("gpiochip*"))
                if not chips:
                    self.add(FAIL, label, "no /dev/gpiochip* on this machine",
                             "GPIO needs a board with a GPIO character device (a Raspberry Pi)")
                else:
                    self._device_node(label, chips[0], "gpio", "")
            elif kind == "modbus_tcp":
                host, port = bus.get("host", ""), int(bus.get("port", 502))
                try:
                    with socket.create_connection((host, port), timeout=self.timeout):
                        pass
                    self.add(OK, label, f"Modbus TCP {host}:{port} accepts connections")
                except OSError as e:
                    self.add(FAIL, label, f"Modbus TCP {host}:{port}: {e.strerror or e}",
                             "check the device's IP address, cabling and that port 502 is open "
                             f"(nc -vz {host} {port})")
            else:
                self.add(SKIP, label, f"type {kind!r}: no presence check")

    def _device_node(self, label: str, path: Path, group: str, hint_missing: str) -> None:
        try:
            st = path.stat()
        except FileNotFoundError:
            self.add(FAIL, label, f"{path} does not exist", hint_missing)
            return
        except OSError as e:
            self.add(FAIL, label, f"{path}: {e.strerror or e}", hint_missing)
            return
        if not stat.S_ISCHR(st.st_mode):
            self.add(FAIL, label, f"{path} is not a character device", hint_missing)
            return
        try:
            gname = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            gname = str(st.st_gid)
        user = self.user
        user_ok = _user_may_access(user, st)
        if user_ok is None:
            me = os.access(path, os.R_OK | os.W_OK)
            self.add(OK if me else WARN, label,
                     f"{path} present (group {gname}); user {user} does not exist (not installed as a "
                     f"service); this user {'may' if me else 'may NOT'} open it",
                     f"sudo usermod -aG {gname} $USER, then log in again")
        elif user_ok:
            self.add(OK, label, f"{path} present, {user} may open it (group {gname})")
        else:
            self.add(FAIL, label, f"{path} present but {user} may not open it (owner group {gname}, "
                                  f"mode {stat.filemode(st.st_mode)})",
                     f"sudo usermod -aG {gname} {user} && sudo systemctl restart edge-agent"
                     + ("" if gname in ("gpio", "i2c", "dialout") else
                        f" (and add {gname} to SupplementaryGroups= in a drop-in: sudo systemctl edit edge-agent)"))

    def check_devices(self) -> None:
        c = self.config
        if c is None:
            return
        if not c.sensors:
            self.add(SKIP, "devices", "no sensors configured")
            return
        if self.status_doc is not None and not self.args.probe:
            self._devices_from_service()
            return
        from hal.sources import HalContext
        context = self.context if self.context is not None else HalContext(emulate=c.emulate, buses=c.buses)
        try:
            for s in c.sensors:
                status, message, hint = _probe(s, context, self.timeout)
                self.add(status, f"device {s.name}", message, hint)
        finally:
            closer = threading.Thread(target=context.close, daemon=True)
            closer.start()
            closer.join(self.timeout)

    def _devices_from_service(self) -> None:
        assert self.status_doc is not None
        for s in self.status_doc.get("sensors") or []:
            label = f"device {s['name']}"
            streams = s.get("streams") or {}
            lasts = [(n, e.get("last") or {}, e.get("age_s")) for n, e in streams.items()]
            if not lasts:
                self.add(FAIL, label, f"the running service has no record from it yet ({s.get('errors') or 0} "
                                      "read errors)", "journalctl -u edge-agent | grep " + s["name"])
                continue
            bad = [(n, last) for n, last, _ in lasts if last.get("quality") == "bad"]
            if bad:
                n, last = bad[0]
                self.add(FAIL, label, f"{n}: quality bad: {last.get('error') or 'no value'}",
                         _hint_for(last.get("error") or "", s.get("bus")))
            else:
                self.add(OK, label, f"answers in the running service (rate {s.get('rate_hz')}/s, expected "
                                    f"{s.get('expected_rate_hz')}/s)")

    def check_broker(self) -> None:
        c = self.config
        if c is None:
            return
        if self.status_doc is not None and (self.status_doc.get("link") or {}).get("state") == "up":
            self.add(OK, "broker", f"{c.mqtt.broker.url}: the running service is connected")
            return
        if self.args.skip_broker:
            self.add(SKIP, "broker", "skipped (--skip-broker)")
            return
        status, message, hint = probe_broker(c, self.timeout)
        self.add(status, "broker", message, hint)

    def check_clock(self) -> None:
        synced = clock_synchronised()
        year = time.gmtime().tm_year
        if year < 2024:
            self.add(FAIL, "clock", f"the clock says {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC: "
                                    "records would carry wrong times",
                     "check NTP: timedatectl; a Pi has no RTC and needs the network time at boot")
        elif synced is None:
            self.add(SKIP, "clock", "synchronisation state unknown on this system")
        elif synced:
            self.add(OK, "clock", "synchronised (NTP)")
        else:
            self.add(WARN, "clock", "not synchronised: timestamps may drift",
                     "sudo timedatectl set-ntp true; check the NTP server is reachable (timedatectl "
                     "timesync-status)")

    def check_storage(self, state_dir: Path) -> None:
        c = self.config
        probe = state_dir if state_dir.exists() else state_dir.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            du = shutil.disk_usage(probe)
        except OSError as e:
            self.add(FAIL, "disk", f"{probe}: {e.strerror or e}")
            return
        need = (c.outbox if c else OutboxConfig()).max_mb * 1e6
        free_pct = du.free / du.total * 100
        msg = f"{du.free / 1e9:.1f} GB free of {du.total / 1e9:.1f} GB ({free_pct:.0f} %) at {probe}"
        if du.free < need:
            self.add(FAIL, "disk", msg + f"; less than the outbox may grow to ({need / 1e6:.0f} MB)",
                     "free space (sudo journalctl --vacuum-size=50M; apt clean) or lower outbox.max_mb")
        elif free_pct < 10:
            self.add(WARN, "disk", msg, "free space: sudo journalctl --vacuum-size=50M; sudo apt clean")
        else:
            self.add(OK, "disk", msg)
        self._outbox(state_dir)

    def _outbox(self, state_dir: Path) -> None:
        import sqlite3

        from agent.outbox import DB_NAME, unpublished_lost
        path = state_dir / DB_NAME
        if not path.exists():
            self.add(OK if not state_dir.exists() else WARN, "outbox",
                     f"no outbox yet at {path} (created at the first start)")
            return
        try:
            view = open_outbox(state_dir)
        except CliError as e:
            self.add(FAIL, "outbox", str(e), "check ownership: sudo chown -R edge-agent:edge-agent "
                                             f"{state_dir}")
            return
        try:
            result = view.quick_check()
            depth, oldest = view.head()
        except sqlite3.Error as e:
            self.add(FAIL, "outbox", f"{path}: {e}",
                     "stop the service, move the file aside (its records are lost) and start again")
            return
        finally:
            view.close()
        if result != "ok":
            self.add(FAIL, "outbox", f"{path} is damaged: {result}",
                     "sudo systemctl stop edge-agent; export what is readable (edge-agent buffer export -o "
                     "backup.jsonl), move outbox.db* aside, start again")
            return
        age = (time.time_ns() - oldest) / 1e9 if oldest else 0.0
        live = (self.status_doc or {}).get("outbox") or {}
        fault = live.get("fault")
        _, lost = unpublished_lost(state_dir)
        if fault:
            cause = str(live.get("fault_cause") or "error").replace("_", " ")
            self.add(FAIL, "outbox", f"WEDGED: the service cannot commit to it ({cause}: {fault}); new records wait "
                                     f"in memory, {live.get('not_committed', 0)} not committed so far (each counted "
                                     "in a not_committed gap event)",
                     live.get("fix") or "check disk space (df -h) and that the file system is not read-only (mount)")
        elif lost:
            self.add(WARN, "outbox", f"{sum(lost.values())} records were not committed before the last stop "
                                     f"({', '.join(f'{s}: {n}' for s, n in sorted(lost.items()))}); the tally waits in "
                                     f"{state_dir / 'outbox.lost'} and is published as gap events at the next start",
                     "start the service; check why the outbox could not be written (df -h; dmesg)")
        elif depth and age > 3600:
            self.add(WARN, "outbox", f"{depth} records waiting, the oldest {age / 3600:.1f} h old (the broker has not "
                                     "taken them)", "see the broker check above; edge-agent status shows the link")
        else:
            self.add(OK, "outbox",
                     f"integrity ok, {depth} records waiting" + (f", oldest {age:.0f} s" if depth else ""))

    def check_numba_cache(self) -> None:
        from agent.signal.cache import default_cache_dir
        env = os.environ.get("NUMBA_CACHE_DIR")
        cache = Path(env) if env else (Path("/var/cache/edge-agent/numba")
                                       if Path("/var/cache/edge-agent/numba").exists() else default_cache_dir())
        index = list(cache.rglob("*.nbi")) if cache.exists() else []
        if not index:
            self.add(WARN, "numba cache", f"cold ({cache} holds no compiled kernels): the first start compiles for "
                                          "minutes on a Pi", "edge-agent warmup (the service runs it before starting)")
        else:
            newest = max(p.stat().st_mtime for p in index)
            self.add(OK, "numba cache", f"warm: {len(index)} kernels in {cache} (newest "
                                        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(newest))})")

    def check_platform(self) -> None:
        from agent.health import soc_temperature_c, throttling
        temp = soc_temperature_c()
        if temp is None:
            self.add(SKIP, "soc temperature", "not exposed on this platform")
        elif temp >= 80:
            self.add(FAIL, "soc temperature", f"{temp:.1f} °C: the SoC throttles above 80 °C",
                     "ventilate the cabinet; add a heat sink or fan")
        elif temp >= 70:
            self.add(WARN, "soc temperature", f"{temp:.1f} °C", "ventilate the cabinet; add a heat sink")
        else:
            self.add(OK, "soc temperature", f"{temp:.1f} °C")
        th = throttling()
        if th is None:
            self.add(SKIP, "power/throttling", "not a Raspberry Pi (no firmware throttling flags)")
            return
        now = [k for k in ("under_voltage", "throttled", "arm_frequency_capped", "soft_temperature_limit") if th.get(k)]
        past = [k for k in ("under_voltage_occurred", "throttling_occurred", "arm_frequency_capping_occurred",
                            "soft_temperature_limit_occurred") if th.get(k)]
        hint = ("use the official power supply (5.1 V, 3 A for a Pi 4, 5 A for a Pi 5) and a short, thick cable; "
                "USB adapters powered from the Pi add to the load")
        if "under_voltage" in now:
            self.add(FAIL, "power/throttling", f"UNDER-VOLTAGE now ({th.get('raw')}): SD card corruption risk", hint)
        elif now:
            self.add(WARN, "power/throttling", f"now: {', '.join(now)} ({th.get('raw')})", hint)
        elif past:
            self.add(WARN, "power/throttling", f"since boot: {', '.join(past)} ({th.get('raw')})", hint)
        else:
            self.add(OK, "power/throttling", f"no under-voltage or throttling since boot ({th.get('raw')})")

    def run(self) -> int:
        self.check_config()
        state_dir = state_dir_for(self.args, self.config)
        self.check_service(state_dir)
        self.check_buses()
        self.check_devices()
        self.check_broker()
        self.check_clock()
        self.check_storage(state_dir)
        self.check_numba_cache()
        self.check_platform()
        failed = [c for c in self.results if c.status == FAIL]
        if self.args.json:
            import json
            print(json.dumps([c.__dict__ for c in self.results], indent=2))
        else:
            warned = sum(1 for c in self.results if c.status == WARN)
            print(f"{len(failed)} failed, {warned} warnings, {len(self.results)} checks", flush=True)
        return 1 if failed else 0


# -- probes ---------------------------------------------------------------------------------------------------------

def _user_may_access(user: str, st: os.stat_result) -> bool | None:
    """Whether `user` may read and write a node with this stat through its uid or groups; None if no such user."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    if pw.pw_uid == 0:
        return True
    groups = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    mode = st.st_mode
    if st.st_uid == pw.pw_uid:
        return bool(mode & stat.S_IRUSR and mode & stat.S_IWUSR)
    if st.st_gid in groups:
        return bool(mode & stat.S_IRGRP and mode & stat.S_IWGRP)
    return bool(mode & stat.S_IROTH and mode & stat.S_IWOTH)


def _hint_for(error: str, bus: str | None) -> str:
    e = error.lower()
    on = f" on bus {bus}" if bus else ""
    if "permission" in e:
        return "add the service user to the device's group (see the bus check above)"
    if any(w in e for w in ("no such device", "nack", "acknowledge", "remote i/o", "remoteio", "not found", "absent",
                            "121", "no answer", "unplugged", "failure")):
        return (f"check the device's wiring, power and address{on}; is it plugged in? (I2C: `i2cdetect -y 1` lists "
                "the chips that answer)")
    if "timeout" in e or "timed out" in e:
        return f"check cabling, termination and baud rate/parity{on}; another master on the bus?"
    if "crc" in e:
        return f"noise or a wrong baud rate{on}: check termination, shielding and the serial settings"
    return f"check the device and its wiring{on}; journalctl -u edge-agent shows the driver's errors"


def _probe(sensor: Any, context: Any, timeout: float) -> tuple[str, str, str]:
    """Open a sensor's driver through the HAL and read it once, in a thread so a hung driver cannot hang doctor."""
    from hal.sources import open_source
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            src = open_source(sensor.driver, sensor.name, sensor.options, context, bus=sensor.bus)
            src.open()
            try:
                if src.kind == "stream":
                    deadline = time.monotonic() + timeout
                    block = None
                    while block is None and time.monotonic() < deadline:
                        block = src.read_block(timeout=min(0.5, max(0.05, deadline - time.monotonic())))
                    result["block"] = block
                else:
                    result["readings"] = src.poll()
            finally:
                src.close()
        except Exception as e:  # every driver fault is a finding, never a crash of doctor
            result["error"] = e

    t = threading.Thread(target=run, name=f"doctor-{sensor.name}", daemon=True)
    t.start()
    t.join(timeout + 1.0)
    if t.is_alive():
        return FAIL, f"{sensor.driver}: no answer within {timeout:g} s (the driver is stuck)", _hint_for(
            "timeout", sensor.bus)
    if "error" in result:
        e = result["error"]
        return FAIL, f"{sensor.driver}: {type(e).__name__}: {e}", _hint_for(f"{type(e).__name__} {e}", sensor.bus)
    if "block" in result:
        b = result["block"]
        if b is None:
            return FAIL, f"{sensor.driver}: no samples within {timeout:g} s", _hint_for("timeout", sensor.bus)
        q = str(b.quality)
        return (OK if q == "good" else WARN), f"{sensor.driver}: {len(b)} samples at {b.rate_hz:g} Hz, quality {q}", ""
    readings = result.get("readings") or []
    if not readings:
        return FAIL, f"{sensor.driver}: returned no readings", _hint_for("", sensor.bus)
    bad = [r for r in readings if str(r.quality) == "bad"]
    if bad:
        r = bad[0]
        more = f" ({len(bad)} of {len(readings)} channels bad)" if len(readings) > 1 else ""
        return FAIL, f"{sensor.driver}: {r.channel}: {r.error or 'bad reading'}{more}", _hint_for(r.error or "",
                                                                                                 sensor.bus)
    r = readings[0]
    more = f" (+{len(readings) - 1} channels)" if len(readings) > 1 else ""
    return OK, f"{sensor.driver}: {r.channel} = {r.value} {r.unit}{more}".rstrip(), ""


def probe_broker(config: Config, timeout: float) -> tuple[str, str, str]:
    """TCP connect, TLS handshake (mqtts), then an MQTT CONNECT with the configured credentials; (status, msg, hint)."""
    m = config.mqtt
    b = m.broker
    host_hint = f"check mqtt.url ({b.url}), the network (ping {b.host}) and the broker's firewall"
    try:
        raw = socket.create_connection((b.host, b.port), timeout=timeout)
    except OSError as e:
        return FAIL, f"{b.url}: cannot connect: {e.strerror or e}", host_hint
    raw.close()
    if b.tls:
        ctx = ssl.create_default_context(cafile=getattr(m, "ca_file", "") or None)
        if getattr(m, "tls_insecure", False):
            ctx.check_hostname = False
        try:
            with socket.create_connection((b.host, b.port), timeout=timeout) as s, \
                    ctx.wrap_socket(s, server_hostname=b.host) as tls:
                tls.version()  # the handshake completed
        except ssl.SSLCertVerificationError as e:
            return FAIL, f"{b.url}: TLS certificate not trusted: {e.verify_message}", (
                "set mqtt.ca_file to the CA that signed the broker's certificate; check the host name in mqtt.url "
                "matches the certificate")
        except (ssl.SSLError, OSError) as e:
            return FAIL, f"{b.url}: TLS handshake failed: {e}", "is this port TLS (8883)? check mqtt.url's scheme"
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        outcome["rc"] = reason_code
        done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-agent-doctor-{os.getpid()}", clean_session=True)
    c.on_connect = on_connect
    if getattr(m, "username", ""):
        c.username_pw_set(m.username, getattr(m, "password", "") or None)
    if b.tls:
        c.tls_set(ca_certs=getattr(m, "ca_file", "") or None,
                  certfile=getattr(m, "cert_file", "") or None, keyfile=getattr(m, "key_file", "") or None)
        if getattr(m, "tls_insecure", False):
            c.tls_insecure_set(True)
    try:
        c.connect(b.host, b.port, keepalive=10)
        deadline = time.monotonic() + timeout
        while not done.is_set() and time.monotonic() < deadline:
            c.loop(timeout=0.1)
    except (OSError, ssl.SSLError, ValueError) as e:
        return FAIL, f"{b.url}: MQTT connect failed: {e}", host_hint
    finally:
        try:
            c.disconnect()
        except Exception:
            pass
    if "rc" not in outcome:
        return FAIL, f"{b.url}: no MQTT answer (CONNACK) within {timeout:g} s", "is this an MQTT port?"
    rc = outcome["rc"]
    if rc.is_failure:
        hint = ("check mqtt.username and the password (password_file / password_env) and the broker's ACL"
                if "authori" in str(rc).lower() or "password" in str(rc).lower() else "see the broker's log")
        return FAIL, f"{b.url}: the broker refused the connection: {rc}", hint
    how = "TLS, " if b.tls else ""
    who = f" as {m.username}" if getattr(m, "username", "") else ""
    return OK, f"{b.url}: {how}MQTT connection accepted{who}", ""


def clock_synchronised() -> bool | None:
    """True/False from the kernel's NTP state (adjtimex), None when it cannot be read."""
    if Path("/run/systemd/timesync/synchronized").exists():
        return True
    try:
        import ctypes
        import ctypes.util
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != 5  # TIME_ERROR: the clock is not synchronised


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check config, buses, devices, broker, clock, disk, cache, power; one line each",
                       description="Runs every check and prints one line per check with a fix hint. Exit code 1 "
                                   "when any check fails (warnings do not fail).")
    add_diag_args(p, socket=True)
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="per device / broker timeout (default 5)")
    p.add_argument("--probe", action="store_true",
                   help="open the drivers even while the service runs (it may hold the port)")
    p.add_argument("--skip-broker", action="store_true", help="do not contact the broker")
    p.add_argument("--service-user", metavar="USER", default=SERVICE_USER,
                   help=f"check device permissions for this user (default {SERVICE_USER})")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=with_errors(lambda a: Doctor(a).run()))
