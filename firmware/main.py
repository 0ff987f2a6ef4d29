# Boot entry of the sensor node: wire the board (ADC channels, link, watchdog) and run the node forever.
#
# To update the firmware, hold config.SAFE_PIN low at power-up: main.py then returns and the REPL stays usable
# (once the node runs, Ctrl-C is disabled on the USB link and the watchdog cannot be stopped).

import machine
import micropython

import config
from link import open_link
from node import Node


def main():
    if config.SAFE_PIN is not None:
        if machine.Pin(config.SAFE_PIN, machine.Pin.IN, machine.Pin.PULL_UP).value() == 0:
            return
    micropython.alloc_emergency_exception_buf(100)
    adcs = [machine.ADC(ch) for ch in config.ADC_CHANNELS]
    link = open_link(config)
    wdt = machine.WDT(timeout=config.WDT_MS) if config.WDT_MS else None
    node = Node(link, adcs, config.ADC_CHANNELS, machine.unique_id(), machine.reset_cause(), wdt, config)
    node.run()


main()
