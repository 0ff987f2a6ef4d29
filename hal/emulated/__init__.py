"""Emulated hardware: the plant model and emulated backends. Shipped in the package, a sibling of the real ones."""
