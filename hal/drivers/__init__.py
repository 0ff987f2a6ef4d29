"""Chip drivers, one module per chip, each reading like its datasheet: named registers, bit fields, conversions
with the datasheet's units. They are written against `hal.i2c.I2CDevice`, never against smbus2 directly."""
