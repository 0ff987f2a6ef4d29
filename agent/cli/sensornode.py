"""`edge-agent sensornode ...`: find, watch and emulate RP2040 sensor nodes (firmware/, hal/sensornode)."""

from __future__ import annotations

import argparse
import glob
import sys
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sensornode", help="find, watch and emulate RP2040 sensor nodes",
                              description="Diagnostics for the RP2040 sensor node (firmware/PROTOCOL.md).")
    sub = p.add_subparsers(dest="sensornode_command", metavar="ACTION")
    sub.required = True

    ls = sub.add_parser("list", help="identify the sensor node on each matching port (board id, firmware, rates)")
    ls.add_argument("--port", default="/dev/ttyACM*", help="port path or glob (default /dev/ttyACM*)")
    ls.add_argument("--baudrate", type=int, default=921600, help="for UART links (default 921600)")
    ls.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for each reply (default 1)")
    ls.set_defaults(func=cmd_list)

    rd = sub.add_parser("read", help="stream from a node and print one line per block (rms per channel, gaps)")
    rd.add_argument("--port", default="/dev/ttyACM*", help="port path or glob (default /dev/ttyACM*)")
    rd.add_argument("--board-id", default="", help="hex board id to match (default: the first node found)")
    rd.add_argument("--rate", type=int, default=3200, help="sample rate in Hz (default 3200)")
    rd.add_argument("--channels", default="0", help="comma-separated ADC channels (default 0)")
    rd.add_argument("--blocks", type=int, default=10, help="blocks to read (default 10)")
    rd.add_argument("--emulate", action="store_true", help="start an emulated node (the firmware source) first")
    rd.set_defaults(func=cmd_read)

    em = sub.add_parser("emulate", help="serve an emulated node (the firmware source) on a pty until Ctrl-C")
    em.add_argument("--link-dir", default=None, help="directory for the port symlink (default: a temp dir)")
    em.add_argument("--board-id", default=None, help="hex board id (default derived from --name)")
    em.add_argument("--name", default="node", help="name the default board id is derived from")
    em.set_defaults(func=cmd_emulate)


def cmd_list(args: argparse.Namespace) -> int:
    from hal.sensornode.driver import probe

    ports = sorted(glob.glob(args.port)) if glob.has_magic(args.port) else [args.port]
    if not ports:
        print(f"no port matches {args.port}", file=sys.stderr)
        return 1
    found = 0
    for port in ports:
        r = probe(port, args.baudrate, args.timeout)
        if isinstance(r, str):
            print(f"{port}: {r}")
            continue
        found += 1
        cause = {1: "power-on", 3: "watchdog"}.get(r.reset_cause, str(r.reset_cause))
        print(f"{port}: board {r.board_id}  {r.name} {'.'.join(map(str, r.version))} (protocol {r.proto})  "
              f"channels {list(r.available_channels)}  {r.min_rate_hz}..{r.max_rate_hz} Hz "
              f"(now {r.rate_hz:.7g} Hz: period {r.period_ns} ns)  "
              f"last reset: {cause}")
    return 0 if found else 1


def cmd_read(args: argparse.Namespace) -> int:
    import numpy as np

    from hal.errors import ConfigurationError
    from hal.sources import HalContext, open_source

    try:
        channels = [int(c) for c in args.channels.split(",") if c.strip()]
        ctx = HalContext(emulate=args.emulate)
        drv = open_source("sensornode", "sensornode", {"port": args.port, "board_id": args.board_id,
                                                      "rate_hz": args.rate, "channels": channels}, ctx)
    except (ConfigurationError, ValueError) as e:
        print(f"edge-agent sensornode read: {e}", file=sys.stderr)
        return 2
    drv.open()
    got = 0
    try:
        for _ in range(args.blocks * 20):
            b = drv.read_block(1.0)
            if b is None:
                continue
            x = b.samples.reshape(len(b), -1)
            rms = " ".join(f"{a}={v:.3f}" for a, v in zip(b.axes, np.sqrt((x ** 2).mean(axis=0))))
            print(f"{time.strftime('%H:%M:%S', time.localtime(b.t0_ns / 1e9))} {len(b)} samples @ {b.rate_hz:g} Hz "
                  f"gap {b.gap} {b.quality}  rms {rms} {b.unit}")
            got += 1
            if got == args.blocks:
                break
    except KeyboardInterrupt:
        pass
    finally:
        drv.close()
        ctx.close()
    counters = {k: v for k, v in drv.counters.items() if v}
    print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    return 0 if got else 1


def cmd_emulate(args: argparse.Namespace) -> int:
    from hal.emulated.micropython.runner import main

    argv = ["--name", args.name]
    if args.link_dir:
        argv += ["--link-dir", args.link_dir]
    if args.board_id:
        argv += ["--board-id", args.board_id]
    return main(argv)
