"""Texas Instruments INA219 current / power monitor, as its data sheet (SBOS448) declares it.

Registers: section 8.6 (config reset 0x399F; calibration reset 0; all MSB first). Config fields: RST[15],
BRNG[13] (0 = 16 V, 1 = 32 V), PG[12:11] (/1 40 mV ... /8 320 mV), BADC[10:7], SADC[6:3] (0011 = 12 bit, 1xxx =
2^xxx samples averaged), MODE[2:0]. Bus voltage register: bits 15:3 in 4 mV steps, CNVR[1], OVF[0]. Shunt
voltage LSB 10 µV. Section 8.5 programming: Current_LSB = Maximum Expected Current / 2^15 (eq. 2); Cal =
trunc(0.04096 / (Current_LSB × R_SHUNT)) (eq. 1) into a 16-bit register whose bit 0 is void (so at most 0xFFFE);
Power_LSB = 20 × Current_LSB (eq. 3); Current = Shunt voltage register × Cal / 4096 (eq. 4); Power = Current ×
Bus voltage register / 5000 (eq. 5). Conversion times: table 5 (ADC settings): 9 bit 84 µs, 10 bit 148 µs,
11 bit 276 µs, 12 bit 532 µs, and 2..128 averaged samples 1.06, 2.13, 4.26, 8.51, 17.02, 34.05, 68.10 ms.
"""

from __future__ import annotations

import math

from hal.chips import Chip, Field, Register, i2c_read_bits, registers

CONFIG = Register("config", 0x00, 0x399F, width=16)
SHUNT_VOLTAGE = Register("shunt_voltage", 0x01, None, width=16, access="r")
BUS_VOLTAGE = Register("bus_voltage", 0x02, None, width=16, access="r")
POWER = Register("power", 0x03, 0x0000, width=16, access="r")
CURRENT = Register("current", 0x04, 0x0000, width=16, access="r")
CALIBRATION = Register("calibration", 0x05, 0x0000, width=16, doc="bits 15:1; bit 0 is void")

RST = Field(CONFIG, 15)
BRNG = Field(CONFIG, 13)
PG = Field(CONFIG, 11, 2)
BADC = Field(CONFIG, 7, 4)
SADC = Field(CONFIG, 3, 4)
MODE = Field(CONFIG, 0, 3)
BUS_VOLTS = Field(BUS_VOLTAGE, 3, 13)
CNVR = Field(BUS_VOLTAGE, 1)
OVF = Field(BUS_VOLTAGE, 0)

CONFIG_RESET = 0x399F
BUS_RANGE_V = {16: 0, 32: 1}
PG_FULL_SCALE_V = {0.04: 0b00, 0.08: 0b01, 0.16: 0b10, 0.32: 0b11}
ADC_AVERAGING = {1: 0b0011, 2: 0b1001, 4: 0b1010, 8: 0b1011, 16: 0b1100, 32: 0b1101, 64: 0b1110, 128: 0b1111}
CONVERSION_S = {1: 532e-6, 2: 1.06e-3, 4: 2.13e-3, 8: 4.26e-3, 16: 8.51e-3, 32: 17.02e-3, 64: 34.05e-3,
                128: 68.10e-3}  # table 5, 12-bit and averaged
MODE_SHUNT_BUS_CONTINUOUS = 0b111
SHUNT_LSB_V = 10e-6
BUS_LSB_V = 0.004
CAL_MAX = 0xFFFE  # 16 bits, bit 0 void
CAL_NUMERATOR = 0.04096  # eq. 1


def calibration_limits(shunt_ohm: float) -> tuple[float, float]:
    """(smallest, largest) Current_LSB in A whose Cal fits the register (2 .. 0xFFFE) for this shunt."""
    return CAL_NUMERATOR / (CAL_MAX * shunt_ohm), CAL_NUMERATOR / (2 * shunt_ohm)


def calibration(max_current_a: float, shunt_ohm: float, current_lsb_a: float = 0.0) -> tuple[int, float, float]:
    """(Cal register, Current_LSB in A, Power_LSB in W) per equations 1-3. With `current_lsb_a` given (a round
    number, as the data sheet suggests) it is used; otherwise Maximum Expected Current / 2^15. ValueError naming
    the valid Current_LSB range if Cal does not fit the register - checked before bit 0 is cleared, never
    wrapped."""
    if shunt_ohm <= 0:
        raise ValueError(f"expected a shunt resistance > 0 ohm, got {shunt_ohm:g}")
    lsb = current_lsb_a or max_current_a / 32768.0
    lo, hi = calibration_limits(shunt_ohm)
    exact = CAL_NUMERATOR / (lsb * shunt_ohm)
    if not 2 <= exact < CAL_MAX + 1:
        raise ValueError(
            f"expected a current LSB from {lo:.5g} to {hi:.5g} A with a {shunt_ohm:g} ohm shunt: "
            f"Cal = trunc(0.04096 / ({lsb:g} A x {shunt_ohm:g} ohm)) = {math.trunc(exact)} does not fit the 16-bit "
            f"calibration register (2..{CAL_MAX}); the smallest LSB it allows is {lo:.5g} A")
    cal = int(math.trunc(exact)) & 0xFFFE
    if max_current_a > 32768 * lsb * (1 + 1e-9):  # eq. 2: Current_LSB >= Maximum Expected Current / 2^15
        raise ValueError(f"expected a current LSB of at least {max_current_a / 32768:.4g} A (max_current_a / 2^15, "
                         f"eq. 2): {max_current_a:g} A would overflow the current register (2^15 x {lsb:g} A = "
                         f"{32768 * lsb:.4g} A)")
    if not current_lsb_a:
        lsb = CAL_NUMERATOR / (cal * shunt_ohm)
    return cal, lsb, 20.0 * lsb


def poll_bits() -> int:
    """SCL clocks of one reading: calibration check, bus, shunt, current and power, two bytes each."""
    return 5 * i2c_read_bits(2)


CHIP = Chip(
    name="ina219", part="Texas Instruments INA219", source="SBOS448", addresses=tuple(range(0x40, 0x50)),
    registers=registers(CONFIG, SHUNT_VOLTAGE, BUS_VOLTAGE, POWER, CURRENT, CALIBRATION),
    id_register="config", id_value=CONFIG_RESET, id_is_reset=True)
