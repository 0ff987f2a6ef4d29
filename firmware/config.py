# Board configuration of the sensor node (Raspberry Pi Pico / RP2040). Edit this file, not the others.
#
# The emulator (hal/emulated/micropython) runs these files unchanged, with these values.

NAME = "edge-agent sensornode"
VERSION = (1, 1, 0)  # 1.1: protocol 2 (the real sample period)

# ADC channels wired to sensors: RP2040 ADC0..ADC2 are GP26..GP28, ADC3 is GP29 (VSYS/3 on a Pico),
# ADC4 is the internal temperature sensor.
ADC_CHANNELS = (0, 1, 2)
ADC_BITS = 12  # the RP2040 ADC resolution; read_u16() scales it to 0..65535
TICKS_BITS = 30  # time.ticks_us() wraps at 2**30 on the rp2 port (TICKS_PERIOD)

# Sample rates (per channel, Hz). The host sets the rate with SET_RATE; this is the rate after boot.
DEFAULT_RATE_HZ = 3200
MIN_RATE_HZ = 1
MAX_RATE_HZ = 25600

# Samples per channel in a DATA frame after boot (START may choose another block size).
DEFAULT_BLOCK = 256
MAX_BLOCK = 1024

# Ring buffer: at most this many bytes of samples (split into whole blocks, at least 2).
RING_BYTES = 32768

# Link to the host: "usb" (USB-CDC, sys.stdin/sys.stdout) or "uart" (machine.UART).
LINK = "usb"
UART_ID = 0
UART_BAUD = 921600
UART_TX_PIN = 0
UART_RX_PIN = 1

# Watchdog timeout in ms (0 disables). The RP2040 maximum is 8388 ms.
WDT_MS = 2000

# Hold this GPIO low at power-up to skip the firmware and keep the REPL (for updating it); None disables.
SAFE_PIN = 22
