"""Rolling-bearing defect frequencies from the bearing geometry, and named bearing presets.

With n rolling elements of diameter d on pitch diameter D and contact angle α, and r = d/D·cos α, the defect
frequencies as multiples ("orders") of the shaft speed (inner ring rotating, outer ring fixed) are

    BPFO = n/2 · (1 − r)          ball pass frequency, outer race
    BPFI = n/2 · (1 + r)          ball pass frequency, inner race
    BSF  = D/(2d) · (1 − r²)      ball spin frequency (a defect on a ball hits a race twice per spin)
    FTF  = 1/2 · (1 − r)          fundamental train (cage) frequency

Real bearings slip 1–2 %, which is why the envelope analysis searches a tolerance around each frequency.
Pure Python: no Numba, no NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FAULTS = ("bpfo", "bpfi", "bsf", "ftf")


@dataclass(frozen=True)
class BearingGeometry:
    """Geometry of a rolling bearing. Diameters in any one unit (only their ratio matters); angle in degrees."""

    balls: int
    ball_diameter: float
    pitch_diameter: float
    contact_angle_deg: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        if self.balls < 3:
            raise ValueError(f"bearing {self.name or ''}: expected at least 3 rolling elements, got {self.balls}")
        if not 0 < self.ball_diameter < self.pitch_diameter:
            raise ValueError(f"bearing {self.name or ''}: expected 0 < ball_diameter < pitch_diameter, got "
                             f"{self.ball_diameter} and {self.pitch_diameter}")
        if not 0 <= self.contact_angle_deg < 90:
            raise ValueError(f"bearing {self.name or ''}: expected a contact angle from 0 to 90 degrees, "
                             f"got {self.contact_angle_deg}")

    def orders(self) -> dict[str, float]:
        """Defect frequencies as multiples of the shaft speed: {"bpfo", "bpfi", "bsf", "ftf"}."""
        r = self.ball_diameter / self.pitch_diameter * math.cos(math.radians(self.contact_angle_deg))
        n = self.balls
        return {
            "bpfo": n / 2 * (1 - r),
            "bpfi": n / 2 * (1 + r),
            "bsf": self.pitch_diameter / (2 * self.ball_diameter) * (1 - r * r),
            "ftf": 0.5 * (1 - r),
        }

    def frequencies(self, shaft_hz: float) -> dict[str, float]:
        """Defect frequencies in Hz at shaft speed `shaft_hz`."""
        return {k: v * shaft_hz for k, v in self.orders().items()}


# Named presets. Diameters in inches as published by the manufacturer (only the ratio matters).
# SKF 6205-2RS JEM: the drive-end bearing of the Case Western Reserve University bearing data set.
PRESETS: dict[str, BearingGeometry] = {
    "6205": BearingGeometry(9, 0.3126, 1.537, 0.0, "SKF 6205-2RS"),
    # SKF 6203-2RS JEM: the fan-end bearing of the same data set.
    "6203": BearingGeometry(8, 0.2656, 1.122, 0.0, "SKF 6203-2RS"),
}
PRESETS["6205-2rs"] = PRESETS["6205"]
PRESETS["6203-2rs"] = PRESETS["6203"]


def preset(name: str) -> BearingGeometry:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"expected a bearing preset ({', '.join(sorted(PRESETS))}) or a geometry table, "
                         f"got {name!r}") from None


def geometry(value: str | Mapping[str, Any]) -> BearingGeometry | None:
    """A `features.bearing` value: a preset name, or a table {balls, ball_diameter, pitch_diameter[,
    contact_angle]}; None when empty. Raises ValueError (unknown preset, impossible geometry), KeyError or
    TypeError (a table missing a key or of the wrong type)."""
    if not value:
        return None
    if isinstance(value, str):
        return preset(value)
    return BearingGeometry(int(value["balls"]), float(value["ball_diameter"]), float(value["pitch_diameter"]),
                           float(value.get("contact_angle", 0.0)))
