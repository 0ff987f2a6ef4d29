# The node's byte link to the host: USB-CDC (the board's stdin/stdout) or a UART.
#
# Both offer read() -> bytes or None (never blocks) and write(bytes).


class UsbLink:
    """USB-CDC through sys.stdin.buffer / sys.stdout.buffer, with Ctrl-C disabled so binary commands pass."""

    def __init__(self):
        import sys
        import select
        import micropython
        micropython.kbd_intr(-1)  # a 0x03 byte in a command must not raise KeyboardInterrupt
        self._rx = sys.stdin.buffer
        self._tx = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)

    def read(self):
        out = None
        k = 0
        while k < 256 and self._poll.poll(0):
            b = self._rx.read(1)
            if not b:
                break
            if out is None:
                out = bytearray()
            out.extend(b)
            k += 1
        return out

    def write(self, data):
        self._tx.write(data)


class UartLink:
    """A hardware UART (e.g. to an RS-485 or USB-serial adapter)."""

    def __init__(self, config):
        import machine
        self._uart = machine.UART(config.UART_ID, baudrate=config.UART_BAUD, tx=machine.Pin(config.UART_TX_PIN),
                                  rx=machine.Pin(config.UART_RX_PIN), txbuf=4096, rxbuf=256)

    def read(self):
        n = self._uart.any()
        if not n:
            return None
        return self._uart.read(n)

    def write(self, data):
        self._uart.write(data)


def open_link(config):
    if config.LINK == "uart":
        return UartLink(config)
    return UsbLink()
