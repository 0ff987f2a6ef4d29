"""Modbus RTU and TCP: register maps as configuration (`registermap`), one client per bus (`client`), and the
`modbus` driver that reads one device per sensor (`driver`). pymodbus stays behind `client`."""
