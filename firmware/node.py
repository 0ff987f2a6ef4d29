# The sensor node: a timer samples the ADC channels into a ring of fixed-size blocks; the main loop answers commands
# and streams every full block as a DATA frame. See PROTOCOL.md.
#
# The timer callback runs as an interrupt (hard=True where the port supports it): it allocates nothing, touches only
# preallocated arrays and small ints, and shares state with the main loop through single-writer fields (the callback
# sets full[slot] = 1, the main loop clears it after sending).

import struct
import time
from array import array

import machine

import protocol as P

_ZERO = 32768  # read_u16() mid-scale, sent as 0


def timer_period_us(rate):
    # The rp2 port's machine.Timer(freq=f) runs every (uint64_t)(1000000.0 / f) us - a whole number of
    # microseconds, truncated (ports/rp2/machine_timer.c) - so 3200 Hz is really 312 us = 3205.128 Hz and
    # 25600 Hz is 39 us = 25641.03 Hz. The node reports this period; the host derives the real rate from it.
    return max(1, 1000000 // rate)


class Node:
    def __init__(self, link, adcs, channels, uid, reset_cause, wdt, config):
        self.link = link
        self.adcs = adcs  # machine.ADC objects, one per entry of channels
        self.channels = channels  # ADC channel number of each adc
        self.avail_mask = 0
        for ch in channels:
            self.avail_mask |= 1 << ch
        self.uid = bytes(uid)
        self.reset_cause = reset_cause
        self.wdt = wdt
        self.cfg = config
        self.rate = config.DEFAULT_RATE_HZ  # as requested (Hz)
        self.period_ns = timer_period_us(self.rate) * 1000  # as the timer really runs: reported to the host
        self.n = config.DEFAULT_BLOCK
        self.mask = 1 << channels[0]
        self.timer = None
        self.streaming = False
        self.seq = 0
        self.dropped_total = 0
        self.rx_errors = 0
        self.frames_sent = 0
        self.rx = bytearray()
        self.rx_overflow = False
        self.boot_ms = time.ticks_ms()
        self._setup_ring()

    # ---- sampling (interrupt context) ----

    def _setup_ring(self):
        active = []
        for i in range(len(self.channels)):
            if self.mask & (1 << self.channels[i]):
                active.append(self.adcs[i])
        self.active = tuple(active)
        self.nch = len(active)
        per_block = self.n * self.nch
        self.slots = max(2, self.cfg.RING_BYTES // (2 * per_block))
        self.buf = array("h", bytes(2 * per_block * self.slots))
        self.mv = memoryview(self.buf)
        self.t0s = array("i", bytes(4 * self.slots))
        self.drops = array("i", bytes(4 * self.slots))
        self.full = bytearray(self.slots)
        self.wslot = 0
        self.rslot = 0
        self.fill = 0
        self.lost = 0

    def _tick(self, _timer):
        f = self.fill
        w = self.wslot
        if f == 0:
            if self.full[w]:  # ring full: the main loop has not sent this slot yet
                if self.lost < 0x3FFFFFFF:
                    self.lost += 1
                return
            self.t0s[w] = time.ticks_us()
            self.drops[w] = self.lost
            self.lost = 0
        k = (w * self.n + f) * self.nch
        buf = self.buf
        for adc in self.active:
            buf[k] = adc.read_u16() - _ZERO
            k += 1
        f += 1
        if f == self.n:
            f = 0
            self.full[w] = 1
            w += 1
            if w == self.slots:
                w = 0
            self.wslot = w
        self.fill = f

    def _start_timer(self):
        self.timer = machine.Timer(-1)
        try:
            self.timer.init(mode=machine.Timer.PERIODIC, freq=self.rate, callback=self._tick, hard=True)
        except TypeError:  # port without hard timer callbacks
            self.timer.init(mode=machine.Timer.PERIODIC, freq=self.rate, callback=self._tick)
        self.streaming = True

    def _stop_timer(self):
        if self.timer is not None:
            self.timer.deinit()
            self.timer = None
        self.streaming = False

    # ---- main loop ----

    def run(self):
        while True:
            if self.wdt is not None:
                self.wdt.feed()
            self.service_link()
            if not self.send_ready():
                time.sleep_ms(1)

    def send_ready(self):
        """Send at most a few full blocks; True if one was sent."""
        sent = False
        for _ in range(4):
            r = self.rslot
            if not self.full[r]:
                break
            m = self.n * self.nch
            payload = bytes(self.mv[r * m:(r + 1) * m])
            d = self.drops[r]
            hdr = struct.pack(P.DATA_HDR, P.T_DATA, self.mask, self.n, self.seq, self.t0s[r], self.period_ns, d)
            self.full[r] = 0
            r += 1
            self.rslot = 0 if r == self.slots else r
            self.link.write(P.frame(hdr + payload))
            self.seq = (self.seq + 1) & 0xFFFFFFFF
            self.dropped_total = (self.dropped_total + d) & 0xFFFFFFFF
            self.frames_sent += 1
            sent = True
        return sent

    def service_link(self):
        data = self.link.read()
        if not data:
            return
        for b in data:
            if b == 0:
                if self.rx_overflow:
                    self.rx_errors += 1
                    self._error(0, 0, P.E_FRAMING, b"frame too long")
                elif len(self.rx):
                    self._handle(P.unframe(bytes(self.rx)))
                self.rx = bytearray()
                self.rx_overflow = False
            elif len(self.rx) < P.MAX_CMD:
                self.rx.append(b)
            else:
                self.rx_overflow = True

    # ---- commands ----

    def _send(self, body):
        self.link.write(P.frame(body))

    def _error(self, tag, request_type, code, message):
        self._send(P.error_body(tag, request_type, code, message))

    def _handle(self, body):
        if isinstance(body, int):
            self.rx_errors += 1
            self._error(0, 0, body, b"bad CRC" if body == P.E_CRC else b"bad COBS frame")
            return
        if len(body) < 2:
            self.rx_errors += 1
            self._error(0, body[0], P.E_LENGTH, b"expected at least type and tag")
            return
        t = body[0]
        tag = body[1]
        args = body[2:]
        if t == P.T_IDENTIFY:
            if self._expect(t, tag, args, 0):
                self._identify(tag)
        elif t == P.T_START:
            if self._expect(t, tag, args, 3):
                mask, n = struct.unpack("<BH", args)
                self._start(tag, mask, n)
        elif t == P.T_STOP:
            if self._expect(t, tag, args, 0):
                self._stop_timer()
                self._send(struct.pack("<BBII", P.T_STOP | P.REPLY, tag, self.seq, self.dropped_total))
        elif t == P.T_SET_RATE:
            if self._expect(t, tag, args, 4):
                self._set_rate(tag, struct.unpack("<I", args)[0])
        elif t == P.T_PING:
            if self._expect(t, tag, args, 4):
                self._send(struct.pack("<BBIBIIIII", P.T_PING | P.REPLY, tag, struct.unpack("<I", args)[0],
                                       1 if self.streaming else 0, self.seq, self.dropped_total, self.rx_errors,
                                       self.frames_sent & 0xFFFFFFFF,
                                       time.ticks_diff(time.ticks_ms(), self.boot_ms) & 0xFFFFFFFF))
        else:
            self.rx_errors += 1
            self._error(tag, t, P.E_UNKNOWN, b"unknown command")

    def _expect(self, t, tag, args, n):
        if len(args) == n:
            return True
        self.rx_errors += 1
        self._error(tag, t, P.E_LENGTH, b"expected " + str(n).encode() + b" argument bytes")
        return False

    def _identify(self, tag):
        c = self.cfg
        body = struct.pack("<BBBBBBBBBBBHIIIB", P.T_IDENTIFY | P.REPLY, tag, P.PROTO_VERSION,
                           c.VERSION[0], c.VERSION[1], c.VERSION[2], self.avail_mask, self.mask, c.ADC_BITS,
                           c.TICKS_BITS, self.reset_cause & 0xFF, self.n, self.period_ns, c.MIN_RATE_HZ,
                           c.MAX_RATE_HZ, len(self.uid))
        self._send(body + self.uid + c.NAME.encode())

    def _start(self, tag, mask, n):
        if mask == 0 or mask & ~self.avail_mask:
            self.rx_errors += 1
            self._error(tag, P.T_START, P.E_ARG, b"channel mask not available")
            return
        if n < 1 or n > self.cfg.MAX_BLOCK:
            self.rx_errors += 1
            self._error(tag, P.T_START, P.E_ARG, b"block size out of range")
            return
        self._stop_timer()
        self.mask = mask
        self.n = n
        self._setup_ring()
        self._start_timer()
        self._send(struct.pack("<BBBHIHI", P.T_START | P.REPLY, tag, self.mask, self.n, self.period_ns, self.slots,
                               self.seq))

    def _set_rate(self, tag, rate):
        if rate < self.cfg.MIN_RATE_HZ or rate > self.cfg.MAX_RATE_HZ:
            self.rx_errors += 1
            self._error(tag, P.T_SET_RATE, P.E_ARG, b"rate out of range")
            return
        was = self.streaming
        self._stop_timer()
        self.rate = rate
        self.period_ns = timer_period_us(rate) * 1000
        if was:
            self._setup_ring()  # the partial block at the old rate is discarded
            self._start_timer()
        self._send(struct.pack("<BBI", P.T_SET_RATE | P.REPLY, tag, self.period_ns))
