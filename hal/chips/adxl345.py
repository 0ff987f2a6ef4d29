"""Analog Devices ADXL345 3-axis accelerometer, as its data sheet (Rev. E) declares it.

Register map: table 19 (addresses, reset values). BW_RATE rate codes: table 7 (0x0F = 3200 Hz ... 0x06 = 6.25 Hz;
the output data rate halves with each code step; the bandwidth is rate / 2). DATA_FORMAT: FULL_RES keeps 3.9 mg/LSB
typical in every range (specifications table, "Scale factor"). FIFO (section "FIFO"): 32 entries; stream mode keeps
the newest 32, discarding the oldest; the watermark is FIFO_CTL Samples[4:0]; each entry is read as one six-byte
burst DATAX0..DATAZ1, which pops it ("Retrieving data from FIFO"). INT_SOURCE Overrun (section "Overrun"): in
bypass mode set when new data replaces unread data in DATAX..DATAZ; in every other mode set when the FIFO is
*filled* (full) - not when a sample is lost - and cleared when the FIFO contents are read. The oscillator's output
data rate is accurate to about ±10 % (specifications table), so samples counted against a host clock carry that
tolerance.

Bus speed ("Serial communications" and table 7 notes): 3200 and 1600 Hz are recommended only with SPI at 2 MHz or
more; 800 Hz only with a bus at 400 kHz or more, and the other rates scale proportionally (200 Hz needs 100 kHz).
So on I2C the largest recommended rate is baudrate / 500: 200 Hz at 100 kHz, 800 Hz at 400 kHz (Fast-mode is the
ADXL345's I2C maximum), never 1600 or 3200.
"""

from __future__ import annotations

from hal.chips import Chip, Field, Register, i2c_read_bits, registers

DEVID = Register("DEVID", 0x00, 0xE5, access="r", doc="device ID, 0xE5")
BW_RATE = Register("BW_RATE", 0x2C, 0x0A, doc="LOW_POWER[4] Rate[3:0]")
POWER_CTL = Register("POWER_CTL", 0x2D, 0x00, doc="Link[5] AUTO_SLEEP[4] Measure[3] Sleep[2] Wakeup[1:0]")
INT_ENABLE = Register("INT_ENABLE", 0x2E, 0x00)
INT_MAP = Register("INT_MAP", 0x2F, 0x00)
INT_SOURCE = Register("INT_SOURCE", 0x30, 0x02, access="r", doc="DATA_READY[7] ... Watermark[1] Overrun[0]")
DATA_FORMAT = Register("DATA_FORMAT", 0x31, 0x00,
                       doc="SELF_TEST[7] SPI[6] INT_INVERT[5] FULL_RES[3] Justify[2] Range[1:0]")
DATAX0 = Register("DATAX0", 0x32, 0x00, access="r", doc="DATAX0..DATAZ1: x, y, z little-endian two's complement")
FIFO_CTL = Register("FIFO_CTL", 0x38, 0x00, doc="FIFO_MODE[7:6] Trigger[5] Samples[4:0]")
FIFO_STATUS = Register("FIFO_STATUS", 0x39, 0x00, access="r", doc="FIFO_TRIG[7] Entries[5:0]")

RATE = Field(BW_RATE, 0, 4)
MEASURE = Field(POWER_CTL, 3)
FULL_RES = Field(DATA_FORMAT, 3)
RANGE = Field(DATA_FORMAT, 0, 2)
INT_DATA_READY = Field(INT_SOURCE, 7)
INT_WATERMARK = Field(INT_SOURCE, 1)
INT_OVERRUN = Field(INT_SOURCE, 0)
FIFO_MODE = Field(FIFO_CTL, 6, 2)
FIFO_SAMPLES = Field(FIFO_CTL, 0, 5)
FIFO_ENTRIES = Field(FIFO_STATUS, 0, 6)

ID = 0xE5
FIFO_BYPASS, FIFO_FIFO, FIFO_STREAM, FIFO_TRIGGER = 0b00, 0b01, 0b10, 0b11
FIFO_DEPTH = 32
RANGE_CODES = {2: 0b00, 4: 0b01, 8: 0b10, 16: 0b11}
RATE_CODES = {3200.0: 0x0F, 1600.0: 0x0E, 800.0: 0x0D, 400.0: 0x0C, 200.0: 0x0B, 100.0: 0x0A, 50.0: 0x09,
              25.0: 0x08, 12.5: 0x07, 6.25: 0x06}  # table 7 (lower codes: 3.13 Hz ... 0.10 Hz)
RATE_OF_CODE = {code: rate for rate, code in RATE_CODES.items()}
SCALE_G_PER_LSB = 0.0039  # full resolution, typical
ODR_TOLERANCE = 0.10  # output data rate accuracy, ± fraction

SAMPLE_BYTES = 6  # one FIFO entry: DATAX0..DATAZ1
BUS_HZ_PER_RATE_HZ = 500  # 800 Hz needs 400 kHz, scaled proportionally (200 Hz needs 100 kHz)
I2C_MAX_HZ = 400_000  # the ADXL345 supports Standard- and Fast-mode I2C


def sample_bits() -> int:
    """SCL clocks to read one FIFO entry (a six-byte register read): 84."""
    return i2c_read_bits(SAMPLE_BYTES)


def max_i2c_rate_hz(baudrate: int) -> float:
    """The largest output data rate the data sheet recommends on an I2C bus clocked at `baudrate` Hz."""
    ok = [r for r in RATE_CODES if r * BUS_HZ_PER_RATE_HZ <= min(baudrate, I2C_MAX_HZ)]
    return max(ok) if ok else min(RATE_CODES)


def lsb_g(full_res: bool, range_g: int) -> float:
    """g per LSB: 3.9 mg in full resolution; 10-bit mode doubles it with each range step."""
    return SCALE_G_PER_LSB * (1 if full_res else range_g // 2)


def data_bits(full_res: bool, range_g: int) -> int:
    """Output bits: 10 in fixed mode; full resolution 10 at ±2 g up to 13 at ±16 g."""
    return 10 + (RANGE_CODES[range_g] if full_res else 0)


CHIP = Chip(
    name="adxl345", part="Analog Devices ADXL345", source="ADXL345 data sheet Rev. E",
    addresses=(0x53, 0x1D),
    registers=registers(DEVID, BW_RATE, POWER_CTL, INT_ENABLE, INT_MAP, INT_SOURCE, DATA_FORMAT, DATAX0, FIFO_CTL,
                        FIFO_STATUS),
    id_register="DEVID", id_value=ID, byte_order="little")
