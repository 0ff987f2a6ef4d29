"""Bosch BME280 temperature / humidity / pressure sensor, as its data sheet (BST-BME280-DS002) declares it.

Memory map: section 5.3, table 18 (addresses, reset values: chip_id 0x60, ctrl/config 0x00, data 0x80 00 00 ...
for a skipped measurement). Measurement time: section 9.1, t_measure,max = 1.25 + 2.3 × osrs_t + (2.3 × osrs_p +
0.575) + (2.3 × osrs_h + 0.575) ms (a term is dropped when its oversampling is 0). One measurement's eight data
bytes 0xF7..0xFE are read in one burst (section 4: "burst read ... to guarantee data consistency").
"""

from __future__ import annotations

from hal.chips import Chip, Field, Register, i2c_read_bits, i2c_write_bits, registers

CALIB00 = Register("calib00", 0x88, None, access="r", doc="dig_T1 .. dig_P9 (24 bytes), 0xA1 dig_H1")
ID = Register("id", 0xD0, 0x60, access="r", doc="chip_id 0x60 (a BMP280 reads 0x58)")
RESET = Register("reset", 0xE0, 0x00, access="w", doc="write 0xB6 for a power-on reset")
CALIB26 = Register("calib26", 0xE1, None, access="r", doc="dig_H2 .. dig_H6 (7 bytes)")
CTRL_HUM = Register("ctrl_hum", 0xF2, 0x00, doc="osrs_h[2:0]; effective after the next write to ctrl_meas")
STATUS = Register("status", 0xF3, 0x00, access="r", doc="measuring[3] im_update[0]")
CTRL_MEAS = Register("ctrl_meas", 0xF4, 0x00, doc="osrs_t[7:5] osrs_p[4:2] mode[1:0]")
CONFIG = Register("config", 0xF5, 0x00, doc="t_sb[7:5] filter[4:2] spi3w_en[0]")
PRESS_MSB = Register("press_msb", 0xF7, 0x80, access="r", doc="press (3), temp (3), hum (2): 8 bytes")

OSRS_H = Field(CTRL_HUM, 0, 3)
OSRS_T = Field(CTRL_MEAS, 5, 3)
OSRS_P = Field(CTRL_MEAS, 2, 3)
MODE = Field(CTRL_MEAS, 0, 2)
FILTER_FIELD = Field(CONFIG, 2, 3)
MEASURING = Field(STATUS, 3)
IM_UPDATE = Field(STATUS, 0)

CHIP_ID, BMP280_ID, BME680_ID = 0x60, 0x58, 0x61
RESET_WORD = 0xB6
DATA_BYTES = 8
SKIPPED_DATA = bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])  # table 18 reset values of 0xF7..0xFE
OVERSAMPLING = {0: 0b000, 1: 0b001, 2: 0b010, 4: 0b011, 8: 0b100, 16: 0b101}  # skipped, x1 .. x16
OVERSAMPLING_OF_CODE = {0: 0, 1: 1, 2: 2, 3: 4, 4: 8, 5: 16, 6: 16, 7: 16}  # codes 101 and above: x16


def measurement_time_max_ms(osrs_t: int, osrs_p: int, osrs_h: int) -> float:
    """Section 9.1: the longest a forced measurement takes with these oversampling factors (0 = skipped)."""
    t = 1.25 + (2.3 * osrs_t if osrs_t else 0.0)
    t += (2.3 * osrs_p + 0.575) if osrs_p else 0.0
    t += (2.3 * osrs_h + 0.575) if osrs_h else 0.0
    return t


def poll_bits() -> int:
    """SCL clocks of one forced-mode reading: write ctrl_meas, one status read, the eight-byte burst."""
    return i2c_write_bits(1) + i2c_read_bits(1) + i2c_read_bits(DATA_BYTES)


CHIP = Chip(
    name="bme280", part="Bosch BME280", source="BST-BME280-DS002", addresses=(0x76, 0x77),
    registers=registers(CALIB00, ID, RESET, CALIB26, CTRL_HUM, STATUS, CTRL_MEAS, CONFIG, PRESS_MSB),
    id_register="id", id_value=CHIP_ID, others={BMP280_ID: "BMP280", BME680_ID: "BME680"})
