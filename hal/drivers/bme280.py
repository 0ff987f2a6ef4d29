"""Bosch BME280 temperature / humidity / pressure sensor on I2C (0x76 with SDO low, 0x77 with SDO high).

Source: Bosch Sensortec, "BME280 Combined humidity and pressure sensor" datasheet BST-BME280-DS002 (rev 1.6+):
memory map (section 5.3, table 18), compensation formulas in 32/64-bit integer arithmetic (section 4.2.3 and
appendix 8.2), measurement time (section 9.1). The temperature and pressure formulas are the BMP280's; its datasheet
(BST-BMP280-DS001, section 3.12, table 16) gives the worked example checked in the tests: with dig_T1..dig_P9 =
27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000 and adc_T = 519888, adc_P = 415148:
t_fine = 128422, T = 25.08 degC, p = 100653.27 Pa.

Forced mode: each poll starts one measurement, waits the datasheet's maximum measurement time, reads all eight data
registers in one burst (0xF7..0xFE, so the values belong to one measurement) and compensates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hal.chips import bme280 as chip
from hal.drivers.base import I2CSensor, address_option
from hal.errors import WrongDevice
from hal.options import Option
from hal.types import Quality, Reading

# -- registers (datasheet table 18; declared in hal.chips.bme280) ---------------------------------------------------
_REG_CALIB00 = chip.CALIB00.address
_REG_ID = chip.ID.address
_REG_RESET = chip.RESET.address
_REG_CALIB26 = chip.CALIB26.address
_REG_CTRL_HUM = chip.CTRL_HUM.address
_REG_STATUS = chip.STATUS.address
_REG_CTRL_MEAS = chip.CTRL_MEAS.address
_REG_CONFIG = chip.CONFIG.address
_REG_PRESS_MSB = chip.PRESS_MSB.address

CHIP_ID = chip.CHIP_ID
BMP280_ID = chip.BMP280_ID
RESET_WORD = chip.RESET_WORD
STATUS_MEASURING = chip.MEASURING.mask
STATUS_IM_UPDATE = chip.IM_UPDATE.mask
MODE_SLEEP, MODE_FORCED, MODE_NORMAL = 0b00, 0b01, 0b11
OVERSAMPLING = {0: 0b000, 1: 0b001, 2: 0b010, 4: 0b011, 8: 0b100, 16: 0b101}  # skipped, x1 .. x16
FILTER = {0: 0b000, 2: 0b001, 4: 0b010, 8: 0b011, 16: 0b100}  # IIR filter coefficient
SKIPPED_20BIT = 0x80000  # output of a skipped temperature/pressure measurement
SKIPPED_16BIT = 0x8000


def _s16(lo: int, hi: int) -> int:
    v = lo | (hi << 8)
    return v - 0x10000 if v & 0x8000 else v


def _s12(v: int) -> int:
    return v - 0x1000 if v & 0x800 else v


def _s8(v: int) -> int:
    return v - 0x100 if v & 0x80 else v


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


@dataclass(frozen=True)
class Calibration:
    T1: int; T2: int; T3: int  # noqa: E702
    P1: int; P2: int; P3: int; P4: int; P5: int; P6: int; P7: int; P8: int; P9: int  # noqa: E702
    H1: int = 0; H2: int = 0; H3: int = 0; H4: int = 0; H5: int = 0; H6: int = 0  # noqa: E702

    @classmethod
    def from_registers(cls, c: bytes, h: bytes) -> "Calibration":
        """`c` = 26 bytes from 0x88 (0x88..0xA1), `h` = 7 bytes from 0xE1 (0xE1..0xE7); datasheet table 16."""
        u16 = lambda i: c[i] | (c[i + 1] << 8)  # noqa: E731
        s16 = lambda i: _s16(c[i], c[i + 1])  # noqa: E731
        return cls(
            T1=u16(0), T2=s16(2), T3=s16(4),
            P1=u16(6), P2=s16(8), P3=s16(10), P4=s16(12), P5=s16(14), P6=s16(16), P7=s16(18), P8=s16(20),
            P9=s16(22), H1=c[25],
            H2=_s16(h[0], h[1]), H3=h[2], H4=_s12((h[3] << 4) | (h[4] & 0x0F)), H5=_s12((h[5] << 4) | (h[4] >> 4)),
            H6=_s8(h[6]))

    def to_registers(self) -> tuple[bytes, bytes]:
        """The inverse of `from_registers` (the emulated chip's NVM)."""
        def le(v: int) -> list[int]:
            v &= 0xFFFF
            return [v & 0xFF, v >> 8]
        c = []
        for v in (self.T1, self.T2, self.T3, self.P1, self.P2, self.P3, self.P4, self.P5, self.P6, self.P7,
                  self.P8, self.P9):
            c += le(v)
        c += [0, self.H1 & 0xFF]
        h4, h5 = self.H4 & 0xFFF, self.H5 & 0xFFF
        h = le(self.H2) + [self.H3 & 0xFF, h4 >> 4, (h4 & 0x0F) | ((h5 & 0x0F) << 4), h5 >> 4, self.H6 & 0xFF]
        return bytes(c), bytes(h)


def compensate_temperature(adc_T: int, cal: Calibration) -> tuple[int, int]:
    """BME280_compensate_T_int32: (temperature in 0.01 degC, t_fine)."""
    var1 = (((adc_T >> 3) - (cal.T1 << 1)) * cal.T2) >> 11
    var2 = (((((adc_T >> 4) - cal.T1) * ((adc_T >> 4) - cal.T1)) >> 12) * cal.T3) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


def compensate_pressure(adc_P: int, t_fine: int, cal: Calibration) -> int:
    """BME280_compensate_P_int64: pressure in Pa as unsigned Q24.8 (divide by 256); 0 if var1 is 0."""
    var1 = t_fine - 128000
    var2 = var1 * var1 * cal.P6
    var2 = var2 + ((var1 * cal.P5) << 17)
    var2 = var2 + (cal.P4 << 35)
    var1 = ((var1 * var1 * cal.P3) >> 8) + ((var1 * cal.P2) << 12)
    var1 = (((1 << 47) + var1) * cal.P1) >> 33
    if var1 == 0:
        return 0  # avoid a division by zero
    p = 1048576 - adc_P
    p = _cdiv(((p << 31) - var2) * 3125, var1)
    var1 = (cal.P9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (cal.P8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (cal.P7 << 4)


def compensate_humidity(adc_H: int, t_fine: int, cal: Calibration) -> int:
    """bme280_compensate_H_int32: relative humidity in %RH as unsigned Q22.10 (divide by 1024)."""
    v = t_fine - 76800
    v = (((((adc_H << 14) - (cal.H4 << 20) - (cal.H5 * v)) + 16384) >> 15)
         * (((((((v * cal.H6) >> 10) * (((v * cal.H3) >> 11) + 32768)) >> 10) + 2097152) * cal.H2 + 8192) >> 14))
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * cal.H1) >> 4)
    v = min(max(v, 0), 419430400)
    return v >> 12


measurement_time_max_ms = chip.measurement_time_max_ms  # datasheet 9.1


def _osrs_check(v: Any) -> str | None:
    return None if v in (1, 2, 4, 8, 16) else "expected an oversampling of 1, 2, 4, 8 or 16"


class BME280(I2CSensor):
    """Readings `<name>.temperature` (degC), `<name>.humidity` (%RH), `<name>.pressure` (hPa)."""

    CHIP = "bme280"
    OPTIONS = [
        address_option((0x76, 0x77), 0x76),
        Option("oversampling_t", int, 1, "temperature oversampling 1..16", _osrs_check),
        Option("oversampling_p", int, 1, "pressure oversampling 1..16", _osrs_check),
        Option("oversampling_h", int, 1, "humidity oversampling 1..16", _osrs_check),
        Option("filter", int, 0, "IIR filter coefficient", choices=tuple(FILTER)),
    ]
    CHANNELS = (("temperature", "degC"), ("humidity", "%RH"), ("pressure", "hPa"))

    def setup(self, options: Any) -> None:
        self.osrs = (options["oversampling_t"], options["oversampling_p"], options["oversampling_h"])
        self.filter = options["filter"]
        self.cal: Calibration | None = None

    def init_chip(self) -> None:
        dev = self.dev
        chip_id = dev.read_u8(_REG_ID)
        if chip_id != CHIP_ID:
            hint = " (a BMP280: no humidity)" if chip_id == BMP280_ID else ""
            raise WrongDevice(f"{dev.where()}: chip id 0x{chip_id:02x}{hint}, expected 0x{CHIP_ID:02x} (BME280)")
        dev.write_u8(_REG_RESET, RESET_WORD)
        for _ in range(10):  # NVM copy after reset takes about 2 ms
            self.sleep(0.002)
            if not dev.read_u8(_REG_STATUS) & STATUS_IM_UPDATE:
                break
        self.cal = Calibration.from_registers(dev.read_bytes(_REG_CALIB00, 26), dev.read_bytes(_REG_CALIB26, 7))
        dev.write_u8(_REG_CONFIG, FILTER[self.filter] << 2)
        dev.write_u8(_REG_CTRL_HUM, OVERSAMPLING[self.osrs[2]])
        dev.write_u8(_REG_CTRL_MEAS, self._ctrl_meas(MODE_SLEEP))

    def _ctrl_meas(self, mode: int) -> int:
        return (OVERSAMPLING[self.osrs[0]] << 5) | (OVERSAMPLING[self.osrs[1]] << 2) | mode

    def read_chip(self, ts: int) -> list[Reading]:
        dev = self.dev
        assert self.cal is not None
        dev.write_u8(_REG_CTRL_MEAS, self._ctrl_meas(MODE_FORCED))
        self.sleep(measurement_time_max_ms(*self.osrs) / 1000.0)
        for _ in range(5):
            if not dev.read_u8(_REG_STATUS) & STATUS_MEASURING:
                break
            self.sleep(0.002)
        d = dev.read_bytes(_REG_PRESS_MSB, 8)
        adc_P = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_T = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_H = (d[6] << 8) | d[7]
        if adc_T == SKIPPED_20BIT:
            return self.bad_readings("temperature measurement skipped (chip reset?)", ts)
        t_centi, t_fine = compensate_temperature(adc_T, self.cal)
        out = [Reading(f"{self.name}.temperature", ts, t_centi / 100.0, "degC", Quality.GOOD)]
        if adc_H == SKIPPED_16BIT:
            out.append(Reading.bad(f"{self.name}.humidity", "humidity measurement skipped", "%RH", ts))
        else:
            out.append(Reading(f"{self.name}.humidity", ts, round(compensate_humidity(adc_H, t_fine, self.cal) / 1024.0,
                                                                 3), "%RH", Quality.GOOD))
        p = compensate_pressure(adc_P, t_fine, self.cal) if adc_P != SKIPPED_20BIT else 0
        if p == 0:
            out.append(Reading.bad(f"{self.name}.pressure", "pressure measurement skipped or invalid", "hPa", ts))
        else:
            out.append(Reading(f"{self.name}.pressure", ts, round(p / 256.0 / 100.0, 4), "hPa", Quality.GOOD))
        return out


__all__ = ["BME280", "Calibration", "compensate_temperature", "compensate_pressure", "compensate_humidity"]
