"""Hardware subcommands: `scan i2c`, `scan modbus`, `read SENSOR`. All work on emulated buses too (`--emulate`).

Heavy imports (smbus2, pymodbus, gpiozero) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from agent.cli.common import load_config

DEFAULT_EMULATED_CHIPS = {0x40: "ina219", 0x48: "ads1115", 0x53: "adxl345", 0x76: "bme280"}


def _config(args: argparse.Namespace) -> Any:
    return load_config(getattr(args, "config", None), bool(getattr(args, "emulate", False)), quiet=True)


# -- scan i2c ----------------------------------------------------------------------------------------------------------

def identify(bus: Any, address: int) -> str:
    """Name a chip by its ID register (or, for chips without one, by its power-on configuration), from the chip
    declarations in `hal.chips` (the same ones the drivers and the emulated chips use)."""
    from hal.chips import chips
    from hal.i2c import I2CDevice

    dev = I2CDevice(bus, address)
    for chip in chips().values():
        if address not in chip.addresses:
            continue
        try:
            label = chip.identify(lambda r: dev.read_u16_be(r.address) if r.width == 16 else dev.read_u8(r.address))
        except OSError:
            return ""
        if label:
            return label
    return ""


def _emulated_i2c(args: argparse.Namespace) -> tuple[Any, Any]:
    from hal.sources import HalContext, open_source

    if args.config:
        cfg = _config(args)
        names = [n for n, b in cfg.buses.items() if b.get("type") == "i2c"
                 and (args.bus is None or b.get("bus", 1) == args.bus)]
        if names:
            ctx = HalContext(emulate=True, buses=cfg.buses)
            for s in cfg.sensors:
                if s.bus == names[0]:
                    open_source(s.driver, s.name, s.options, ctx, bus=s.bus)  # places its chip model
            from hal.i2c import open_i2c
            return ctx, open_i2c(ctx, names[0])
    ctx = HalContext(emulate=True, buses={"i2c": {"type": "i2c", "backend": "emulated"}})
    from hal.i2c import open_i2c
    bus = open_i2c(ctx, "i2c")
    for address, chip in DEFAULT_EMULATED_CHIPS.items():
        bus.place(address, chip)
    return ctx, bus


def cmd_scan_i2c(args: argparse.Namespace) -> int:
    from hal.i2c import RealI2CBus, probe

    ctx = None
    if args.emulate:
        ctx, bus = _emulated_i2c(args)
        where = f"emulated bus {bus.name}"
    else:
        number = 1 if args.bus is None else args.bus
        bus = RealI2CBus(f"i2c-{number}", number)
        where = bus.path
        try:
            bus.open()
        except (OSError, ImportError) as e:
            print(f"edge-agent: cannot open {where}: {getattr(e, 'strerror', None) or e} (is I2C enabled? "
                  f"raspi-config > Interface Options > I2C; are you in the i2c group?)", file=sys.stderr)
            return 1
    try:
        try:
            found = [a for a in range(0x03, 0x78) if probe(bus, a)]
        except (OSError, ImportError) as e:
            print(f"edge-agent: cannot scan {where}: {e}", file=sys.stderr)
            return 1
        print(f"I2C scan of {where} (one-byte read at each address):")
        print("     " + " ".join(f" {c:x}" for c in range(16)))
        for row in range(0, 0x80, 0x10):
            cells = []
            for a in range(row, row + 0x10):
                cells.append("  " if a < 0x03 or a > 0x77 else (f"{a:02x}" if a in found else "--"))
            print(f"{row:02x}: " + " ".join(cells))
        for a in found:
            print(f"  0x{a:02x}: {identify(bus, a) or 'unknown chip'}")
        if not found:
            print("  nothing answered (check wiring, pull-ups and that the I2C interface is enabled)")
        return 0
    finally:
        if ctx is not None:
            ctx.close()
        else:
            bus.close()


# -- scan modbus -------------------------------------------------------------------------------------------------------

def _parse_ids(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if not (0 <= a <= b <= 255):
            raise ValueError(f"expected unit ids like 1-247 or 1,2,10-20, got {text!r}")
        ids.extend(range(a, b + 1))
    return ids


def cmd_scan_modbus(args: argparse.Namespace) -> int:
    from hal.errors import BusError, DeviceException
    from hal.modbus.client import ModbusBus
    from hal.sources import HalContext

    try:
        ids = _parse_ids(args.ids)
    except ValueError as e:
        print(f"edge-agent: --ids: {e}", file=sys.stderr)
        return 2
    if not args.emulate and not (args.port or args.host):
        print("edge-agent: scan modbus needs --port DEV (RTU) or --host H (TCP), or --emulate", file=sys.stderr)
        return 2
    bus_type = "modbus_rtu" if args.port else "modbus_tcp"
    options: dict[str, Any] = {"timeout_s": args.timeout, "retries": 0}
    if bus_type == "modbus_rtu":
        options.update(port=args.port, baudrate=args.baud, parity=args.parity, stopbits=args.stopbits)
    else:
        options.update(host=args.host, port=args.tcp_port)
    ctx = HalContext(emulate=bool(args.emulate), buses={"scan": {"type": bus_type, **options}})
    try:
        emulator = None
        if args.emulate:
            emulator = _emulated_modbus(ctx, args, bus_type)
        bus = ModbusBus("scan", bus_type, options, emulator)
        where = "emulated " + ("RTU line" if bus_type == "modbus_rtu" else "TCP server") if emulator else (
            f"{args.port} at {args.baud} baud" if args.port else f"{args.host}:{args.tcp_port}")
        print(f"Modbus scan of {where}: {len(ids)} unit ids, reading {args.table} register {args.register}, "
              f"timeout {args.timeout:g} s")
        found = 0
        for unit in ids:
            try:
                bus.read(args.table, args.register, 1, unit)
                print(f"  unit {unit:3d}: answered")
                found += 1
            except DeviceException as e:
                print(f"  unit {unit:3d}: answered with exception {e.code} ({DeviceException.NAMES.get(e.code, '?')})")
                found += 1
            except BusError as e:
                if "cannot connect" in str(e):
                    print(f"edge-agent: {e}", file=sys.stderr)
                    return 1
        print(f"{found} device(s) answered")
        bus.close()
        return 0
    finally:
        ctx.close()


def _emulated_modbus(ctx: Any, args: argparse.Namespace, bus_type: str) -> Any:
    from hal.emulated.modbus import emulator_for
    from hal.modbus.driver import ModbusDevice
    from hal.modbus.registermap import load_profile

    emulator = emulator_for(ctx, "scan", bus_type)
    added = False
    if args.config:
        cfg = _config(args)
        for s in cfg.sensors:
            if s.driver == "modbus":
                emulator.add_device(int(s.options.get("unit", 1)), ModbusDevice.register_map(s.options))
                added = True
    if not added:
        emulator.add_device(1, load_profile("sdm630"))
        emulator.add_device(2, load_profile("eaton_mmax"))
    return emulator


# -- read --------------------------------------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def cmd_read(args: argparse.Namespace) -> int:
    from agent.errors import ConfigError
    from hal.errors import HalError
    from hal.sources import HalContext, open_source

    try:
        cfg = _config(args)
    except ConfigError as e:
        print(f"edge-agent: invalid configuration:\n{e}", file=sys.stderr)
        return 2
    sensor = next((s for s in cfg.sensors if s.name == args.sensor), None)
    if sensor is None:
        names = ", ".join(s.name for s in cfg.sensors) or "none"
        print(f"edge-agent: no sensor {args.sensor!r} in {cfg.source} (configured: {names})", file=sys.stderr)
        return 2
    ctx = HalContext(emulate=cfg.emulate, buses=cfg.buses)
    try:
        try:
            source = open_source(sensor.driver, sensor.name, sensor.options, ctx, bus=sensor.bus)
            source.open()
        except (HalError, OSError, ImportError) as e:
            print(f"edge-agent: {sensor.name}: {e}", file=sys.stderr)
            return 1
        bus = f" on bus {sensor.bus}" + (" (emulated)" if cfg.emulate or cfg.buses.get(sensor.bus or "", {}).get(
            "backend") == "emulated" else "") if sensor.bus else ""
        print(f"{sensor.name}: {sensor.driver}{bus}")
        good = 0
        try:
            for i in range(args.count):
                if sensor.kind == "stream":
                    block = source.read_block(max(2.0, sensor.interval_s))
                    if block is None:
                        print("  (no block within the timeout)")
                        continue
                    good += 1
                    s = block.samples if block.samples.ndim == 2 else block.samples[:, None]
                    stats = "  ".join(f"{ax}: mean {s[:, k].mean():.4g} rms {s[:, k].std():.4g} peak "
                                      f"{abs(s[:, k] - s[:, k].mean()).max():.4g}" for k, ax in enumerate(block.axes))
                    print(f"  block {len(block)} samples @ {block.rate_hz:g} Hz, gap {block.gap}, {block.quality}, "
                          f"{block.unit}: {stats}")
                    continue
                if i:
                    time.sleep(args.interval if args.interval is not None else sensor.interval_s)
                for r in source.poll():
                    good += r.value is not None
                    tail = f"  ({r.error})" if r.error else ""
                    print(f"  {r.channel:40s} {_fmt(r.value):>14s} {r.unit:6s} {r.quality}{tail}")
        finally:
            source.close()
        return 0 if good else 1
    finally:
        ctx.close()


# -- registration ------------------------------------------------------------------------------------------------------

def register(subparsers: Any) -> None:
    scan = subparsers.add_parser("scan", help="find devices on an I2C bus or a Modbus line")
    ssub = scan.add_subparsers(dest="scan_command", metavar="BUS", required=True)

    i2c = ssub.add_parser("i2c", help="i2cdetect-style grid of responding addresses, naming known chips",
                          description="Probe addresses 0x03-0x77 with a one-byte read and name known chips by their "
                                      "ID register.")
    i2c.add_argument("--bus", type=int, default=None, metavar="N", help="I2C adapter /dev/i2c-N (default 1)")
    i2c.add_argument("--emulate", action="store_true", help="scan the emulated bus (chips of --config, or a demo set)")
    i2c.add_argument("--config", "-c", metavar="FILE", help="with --emulate: place the chips this config describes")
    i2c.set_defaults(func=cmd_scan_i2c)

    mb = ssub.add_parser("modbus", help="find responding Modbus unit ids",
                         description="Read one register from each unit id; an exception response counts as "
                                     "responding.")
    where = mb.add_mutually_exclusive_group()
    where.add_argument("--port", metavar="DEV", help="RS-485 adapter for Modbus RTU, e.g. /dev/ttyUSB0")
    where.add_argument("--host", metavar="H", help="Modbus TCP device or gateway")
    mb.add_argument("--baud", type=int, default=9600, help="RTU baud rate (default 9600)")
    mb.add_argument("--parity", choices=("N", "E", "O"), default="N", help="RTU parity (default N)")
    mb.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="RTU stop bits (default 1)")
    mb.add_argument("--tcp-port", type=int, default=502, help="TCP port (default 502)")
    mb.add_argument("--ids", default="1-247", help="unit ids to try, e.g. 1-247 or 1,2,10-20 (default 1-247)")
    mb.add_argument("--register", type=int, default=0, help="register address to read (default 0)")
    mb.add_argument("--table", choices=("holding", "input", "coil", "discrete_input"), default="holding",
                    help="register table (default holding)")
    mb.add_argument("--timeout", type=float, default=0.1, help="answer timeout per unit id in s (default 0.1)")
    mb.add_argument("--emulate", action="store_true",
                    help="scan an emulated line (TCP, or RTU over a pty with --port) with the devices of --config "
                         "or an SDM630 at 1 and an Eaton M-Max at 2")
    mb.add_argument("--config", "-c", metavar="FILE", help="with --emulate: emulate this config's Modbus devices")
    mb.set_defaults(func=cmd_scan_modbus)

    rd = subparsers.add_parser("read", help="live values of one configured sensor, with units and quality")
    rd.add_argument("sensor", metavar="SENSOR", help="the sensor's name in the config")
    rd.add_argument("--count", "-n", type=int, default=1, help="polls (slow sensors) or blocks (stream) to read")
    rd.add_argument("--interval", type=float, default=None, help="seconds between polls (default: the sensor's)")
    rd.add_argument("--config", "-c", metavar="FILE",
                    help="config file (default /etc/edge-agent/agent.toml; without one, the built-in demo)")
    rd.add_argument("--emulate", action="store_true", help="swap every bus for its emulated backend")
    rd.set_defaults(func=cmd_read)
