"""Texas Instruments ADS1115 16-bit ADC, as its data sheet (SBAS444) declares it.

Registers: section 9.6 (pointer 00 conversion, reset 0x0000; 01 config, reset 0x8583; 10 Lo_thresh, reset 0x8000;
11 Hi_thresh, reset 0x7FFF; MSB first). Config fields: OS[15] (write 1: start a single conversion; read 0: a
conversion is in progress), MUX[14:12], PGA[11:9], MODE[8] (1 = single-shot / power-down), DR[7:5] (8 ... 860
SPS), COMP_MODE[4], COMP_POL[3], COMP_LAT[2], COMP_QUE[1:0] (11 = comparator off). Table 3: full-scale range and
LSB = FSR / 2^15; codes 0x7FFF = +FS, 0x8000 = -FS. A conversion takes one data-rate period, 1 / DR (section
9.4.2, single-shot: "... the device powers up, converts, and powers down"); the data rate varies by up to ±10 %
(electrical characteristics, "Data rate variation"), so a host must not assume 1/860 s between conversions.
"""

from __future__ import annotations

from hal.chips import Chip, Field, Register, i2c_read_bits, i2c_write_bits, registers

CONVERSION = Register("conversion", 0b00, 0x0000, width=16, access="r")
CONFIG = Register("config", 0b01, 0x8583, width=16)
LO_THRESH = Register("lo_thresh", 0b10, 0x8000, width=16)
HI_THRESH = Register("hi_thresh", 0b11, 0x7FFF, width=16)

OS = Field(CONFIG, 15)
MUX_FIELD = Field(CONFIG, 12, 3)
PGA_FIELD = Field(CONFIG, 9, 3)
MODE = Field(CONFIG, 8)
DR = Field(CONFIG, 5, 3)
COMP_QUE = Field(CONFIG, 0, 2)

CONFIG_RESET = 0x8583
MUX = {"AIN0-AIN1": 0b000, "AIN0-AIN3": 0b001, "AIN1-AIN3": 0b010, "AIN2-AIN3": 0b011,
       "AIN0": 0b100, "AIN1": 0b101, "AIN2": 0b110, "AIN3": 0b111}
MUX_OF_CODE = {code: name for name, code in MUX.items()}
PGA = {6.144: 0b000, 4.096: 0b001, 2.048: 0b010, 1.024: 0b011, 0.512: 0b100, 0.256: 0b101}
FSR_OF_CODE = {**{code: fsr for fsr, code in PGA.items()}, 0b110: 0.256, 0b111: 0.256}
DATA_RATE = {8: 0b000, 16: 0b001, 32: 0b010, 64: 0b011, 128: 0b100, 250: 0b101, 475: 0b110, 860: 0b111}
RATE_OF_CODE = {code: rate for rate, code in DATA_RATE.items()}
DATA_RATE_TOLERANCE = 0.10
COMP_QUE_DISABLE = 0b11


def conversion_s(rate: int) -> float:
    return 1.0 / rate


def single_shot_bits() -> int:
    """SCL clocks of one single-shot conversion: write config, poll config once, read the conversion."""
    return i2c_write_bits(2) + 2 * i2c_read_bits(2)


def continuous_read_bits() -> int:
    """SCL clocks of one read of the conversion register in continuous mode."""
    return i2c_read_bits(2)


CHIP = Chip(
    name="ads1115", part="Texas Instruments ADS1115", source="SBAS444", addresses=(0x48, 0x49, 0x4A, 0x4B),
    registers=registers(CONVERSION, CONFIG, LO_THRESH, HI_THRESH),
    id_register="config", id_value=CONFIG_RESET, id_is_reset=True)
