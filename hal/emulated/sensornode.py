"""The ("sensornode", "emulated") row of `hal.backends`: an emulated RP2040 sensor node for each `sensornode` driver.

Owns the decision a real driver must not make: at the driver's `open()` (`prepare`), boot the unchanged firmware in
the emulator (`hal.emulated.micropython.runner.EmulatedNode`) on a pty, its analog front end (sensitivity, zero,
reference) taken from the driver's options and its ADC reading the shared plant, and hand the driver that pty's glob
and the node's board id; at the driver's `close()` (`release`), power it off. The node is also registered with the
context as "sensornode.emulator.<sensor>" (the scenario's `sensornode_unplug` finds it there, and
`HalContext.close()` powers it off even if the driver never closes). Must not touch the driver's protocol handling.
"""

from __future__ import annotations

from typing import Any

from hal.emulated.micropython.runner import EmulatedNode


class EmulatedNodePorts:
    """Where an emulated node is: a pty that appears when the driver opens (see the module docstring)."""

    def __init__(self, context: Any, sensor: str) -> None:
        self.context = context
        self.sensor = sensor
        self.node: EmulatedNode | None = None

    def prepare(self, driver: Any) -> tuple[str, str]:
        plant = self.context.get_plant()
        node = self.context.shared(
            f"sensornode.emulator.{driver.name}",
            lambda: EmulatedNode(plant, driver.board_id or None, name=driver.name, mv_per_unit=driver.mv_per_unit,
                                 zero_v=driver.zero_v, vref=driver.vref_v))
        node.plug()
        self.node = node
        return str(node.link_dir / f"{node.prefix}*"), node.board_id

    def release(self, driver: Any) -> None:
        node, self.node = self.node, None
        if node is not None:
            node.close()

    def close(self) -> None:
        self.release(None)


def emulated_node_ports(context: Any, name: str, bus_type: str, values: dict[str, Any]) -> EmulatedNodePorts:
    """The factory `hal.backends.open_bus` calls, once per sensor."""
    return EmulatedNodePorts(context, name)


__all__ = ["EmulatedNodePorts", "emulated_node_ports"]
