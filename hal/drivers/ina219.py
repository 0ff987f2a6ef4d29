"""Texas Instruments INA219 bus voltage / shunt current / power monitor on I2C (0x40..0x4F by A0/A1).

Source: Texas Instruments, "INA219 Zerø-Drift, Bidirectional Current/Power Monitor With I2C Interface" (SBOS448),
section 8.5 programming: Current_LSB = Maximum Expected Current / 2^15 (eq. 2); Cal = trunc(0.04096 /
(Current_LSB x R_SHUNT)) (eq. 1, bit 0 of the calibration register is void); Power_LSB = 20 x Current_LSB (eq. 3);
Current register = Shunt voltage register x Cal / 4096 (eq. 4); Power register = Current register x Bus voltage
register / 5000 (eq. 5). Section 8.6: config reset 0x399F; BRNG[13] 0 = 16 V, 1 = 32 V; PG[12:11] /1 40 mV,
/2 80 mV, /4 160 mV, /8 320 mV; BADC[10:7] and SADC[6:3] (0011 = 12 bit, 1xxx = averaging of 2^xxx samples);
MODE[2:0] 111 = shunt and bus, continuous. Shunt voltage LSB 10 µV (signed; +320 mV = 0x7D00 at /8); bus voltage
register bits 15:3 in 4 mV steps, CNVR[1] conversion ready, OVF[0] math overflow. Registers are MSB first.
Corroborated by Adafruit's adafruit_ina219.py (32 V, 2 A, 0.1 ohm: Current_LSB 100 µA, Cal 4096, Power_LSB 2 mW).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hal.chips import ina219 as chip
from hal.chips.ina219 import calibration, calibration_limits
from hal.drivers.base import I2CSensor, address_option
from hal.errors import WrongDevice
from hal.options import Option, in_range
from hal.types import Quality, Reading

_REG_CONFIG = chip.CONFIG.address
_REG_SHUNT_VOLTAGE = chip.SHUNT_VOLTAGE.address
_REG_BUS_VOLTAGE = chip.BUS_VOLTAGE.address
_REG_POWER = chip.POWER.address
_REG_CURRENT = chip.CURRENT.address
_REG_CALIBRATION = chip.CALIBRATION.address

CONFIG_RESET = chip.CONFIG_RESET
RESET_BIT = chip.RST.mask
PG = chip.PG_FULL_SCALE_V  # shunt full scale in V
ADC = chip.ADC_AVERAGING
SHUNT_LSB_V = chip.SHUNT_LSB_V
BUS_LSB_V = chip.BUS_LSB_V


def _s16(v: int) -> int:
    return v - 0x10000 if v & 0x8000 else v


def shunt_register_to_volts(raw: int) -> float:
    return _s16(raw) * SHUNT_LSB_V


def bus_register_to_volts(raw: int) -> float:
    return (raw >> 3) * BUS_LSB_V


class INA219(I2CSensor):
    """Readings `<name>.bus_voltage` (V), `.shunt_voltage` (mV), `.current` (A), `.power` (W)."""

    CHIP = "ina219"
    OPTIONS = [
        address_option(tuple(range(0x40, 0x50)), 0x40),
        Option("shunt_ohm", (int, float), 0.1, "shunt resistor in ohms", in_range(1e-5, 100)),
        Option("max_current_a", (int, float), 3.2, "largest expected current in A (sets PGA and calibration)",
               in_range(1e-4, 1000)),
        Option("current_lsb_a", (int, float), 0.0, "current register LSB in A (0: max_current_a / 32768)",
               in_range(0, 1)),
        Option("bus_range_v", int, 32, "bus voltage range", choices=(16, 32)),
        Option("averaging", int, 1, "ADC samples averaged per conversion", choices=tuple(ADC)),
    ]
    CHANNELS = (("bus_voltage", "V"), ("shunt_voltage", "mV"), ("current", "A"), ("power", "W"))

    @classmethod
    def validate(cls, values: Mapping[str, Any]) -> list[tuple[str, str]]:
        shunt_v = values["max_current_a"] * values["shunt_ohm"]
        if shunt_v > 0.32 + 1e-9:
            return [("max_current_a", f"expected at most {0.32 / values['shunt_ohm']:g} A: "
                                      f"{shunt_v * 1000:g} mV across the shunt exceeds the 320 mV range")]
        try:
            calibration(values["max_current_a"], values["shunt_ohm"], values["current_lsb_a"])
        except ValueError as e:
            return [("current_lsb_a", str(e))]
        return []

    def setup(self, options: Mapping[str, Any]) -> None:
        self.shunt_ohm = float(options["shunt_ohm"])
        self.cal, self.current_lsb, self.power_lsb = calibration(
            float(options["max_current_a"]), self.shunt_ohm, float(options["current_lsb_a"]))
        shunt_fs = float(options["max_current_a"]) * self.shunt_ohm
        self.pga = min((fs for fs in PG if fs >= shunt_fs - 1e-9), default=0.32)
        adc = ADC[int(options["averaging"])]
        config = chip.BRNG.put(0, chip.BUS_RANGE_V[int(options["bus_range_v"])])
        config = chip.PG.put(config, PG[self.pga])
        config = chip.BADC.put(chip.SADC.put(config, adc), adc)
        self.config = chip.MODE.put(config, chip.MODE_SHUNT_BUS_CONTINUOUS)

    def init_chip(self) -> None:
        dev = self.dev
        dev.write_u16_be(_REG_CONFIG, RESET_BIT)
        got = dev.read_u16_be(_REG_CONFIG)
        if got != CONFIG_RESET:
            raise WrongDevice(f"{dev.where()}: config after reset reads 0x{got:04x}, expected 0x{CONFIG_RESET:04x} "
                              "(INA219)")
        dev.write_u16_be(_REG_CONFIG, self.config)
        dev.write_u16_be(_REG_CALIBRATION, self.cal)

    def read_chip(self, ts: int) -> list[Reading]:
        dev = self.dev
        if dev.read_u16_be(_REG_CALIBRATION) != self.cal:  # lost on a power-on reset: the chip reports 0 A
            dev.write_u16_be(_REG_CALIBRATION, self.cal)
        bus_raw = dev.read_u16_be(_REG_BUS_VOLTAGE)
        shunt_raw = dev.read_u16_be(_REG_SHUNT_VOLTAGE)
        current_raw = dev.read_u16_be(_REG_CURRENT)
        power_raw = dev.read_u16_be(_REG_POWER)
        n = self.name
        out = [Reading(f"{n}.bus_voltage", ts, round(bus_register_to_volts(bus_raw), 4), "V", Quality.GOOD),
               Reading(f"{n}.shunt_voltage", ts, round(shunt_register_to_volts(shunt_raw) * 1000.0, 3), "mV",
                       Quality.GOOD)]
        if chip.OVF.get(bus_raw):
            err = "math overflow: current or power beyond the calibration range (raise max_current_a)"
            out += [Reading.bad(f"{n}.current", err, "A", ts), Reading.bad(f"{n}.power", err, "W", ts)]
        else:
            out += [Reading(f"{n}.current", ts, round(_s16(current_raw) * self.current_lsb, 6), "A", Quality.GOOD),
                    Reading(f"{n}.power", ts, round(power_raw * self.power_lsb, 5), "W", Quality.GOOD)]
        return out


__all__ = ["INA219", "calibration", "calibration_limits", "shunt_register_to_volts", "bus_register_to_volts"]
