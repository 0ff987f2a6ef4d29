"""Vibration severity zones (ISO 10816-3 / ISO 20816-3) from the broadband velocity RMS.

Zone A: newly commissioned machines; B: unrestricted long-term operation; C: restricted operation, plan a
repair; D: damage likely. A machine's zone limits are the three boundaries A/B, B/C and C/D in mm/s RMS
(10–1000 Hz for machines above 600 rpm). The presets are ISO 10816-3 Annex A (Tables A.1 to A.4); a plant may
set its own limits instead. Pure Python.
"""

from __future__ import annotations

ZONES = ("A", "B", "C", "D")

# (A/B, B/C, C/D) in mm/s RMS.
PRESETS: dict[str, tuple[float, float, float]] = {
    # Group 1: large machines, 300 kW to 50 MW; electrical machines with shaft height >= 315 mm.
    "group1_rigid": (2.3, 4.5, 7.1),
    "group1_flexible": (3.5, 7.1, 11.0),
    # Group 2: medium machines, 15 kW to 300 kW; electrical machines with 160 mm <= shaft height < 315 mm.
    "group2_rigid": (1.4, 2.8, 4.5),
    "group2_flexible": (2.3, 4.5, 7.1),
    # Group 3: pumps with multivane impeller and separate driver, above 15 kW.
    "group3_rigid": (2.3, 4.5, 7.1),
    "group3_flexible": (3.5, 7.1, 11.0),
    # Group 4: pumps with multivane impeller and integrated driver, above 15 kW.
    "group4_rigid": (1.4, 2.8, 4.5),
    "group4_flexible": (2.3, 4.5, 7.1),
}


def check_limits(limits: object) -> str | None:
    """None if `limits` is three increasing positive numbers, else an 'expected ...' message."""
    if (not isinstance(limits, (list, tuple)) or len(limits) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in limits)):
        return "expected three zone limits [A/B, B/C, C/D] in mm/s"
    if not 0 < limits[0] < limits[1] < limits[2]:
        return f"expected increasing positive zone limits, got {list(limits)}"
    return None


def zone(velocity_mm_s: float, limits: tuple[float, float, float]) -> str | None:
    """The zone letter of a velocity RMS; a value on a boundary belongs to the worse zone. None for NaN."""
    if velocity_mm_s != velocity_mm_s:
        return None
    for letter, limit in zip(ZONES, limits):
        if velocity_mm_s < limit:
            return letter
    return "D"


def worst(zones: list[str | None]) -> str | None:
    present = [z for z in zones if z]
    return max(present) if present else None
