"""Where Numba keeps compiled kernels: `configure_cache()` picks a writable directory before Numba is imported.

Order: an explicit directory, else `$NUMBA_CACHE_DIR` (left alone when already set), else `$CACHE_DIRECTORY`
(set by systemd for a unit with `CacheDirectory=`), else `${XDG_CACHE_HOME:-~/.cache}/edge-agent/numba`.

Numba reads `NUMBA_CACHE_DIR` once, when it is first imported, so this must run before any kernel module
(`agent.signal.kernels`) is imported; calling it later raises `RuntimeError` rather than silently caching
somewhere else. This module must not import Numba.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def default_cache_dir() -> Path:
    """The directory `configure_cache()` would choose when nothing is configured."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    if os.environ.get("CACHE_DIRECTORY"):  # systemd: may hold several paths separated by ':'
        return Path(os.environ["CACHE_DIRECTORY"].split(":")[0]) / "numba"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "edge-agent" / "numba"


def configure_cache(directory: str | os.PathLike[str] | None = None) -> Path:
    """Set `NUMBA_CACHE_DIR` (creating the directory) and return it. Call before Numba is imported.

    An explicit `directory` wins; otherwise an existing `$NUMBA_CACHE_DIR` is kept. Raises RuntimeError when
    Numba is already imported with a different cache directory, and OSError when the directory cannot be created.
    """
    path = Path(directory).expanduser() if directory else default_cache_dir()
    if "numba" in sys.modules:
        current = os.environ.get("NUMBA_CACHE_DIR")
        if current and Path(current) == path:
            return path
        raise RuntimeError(f"configure_cache({str(path)!r}) called after numba was imported "
                           f"(cache dir is {current or 'numba default'}); call it before importing agent.signal "
                           "kernels")
    path.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(path)
    return path
