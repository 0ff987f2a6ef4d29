"""The repository's root, for tests that read its files (examples, docs, firmware, units): one definition, so a
test file can move within tests/ (which mirrors the package tree) without counting parent directories."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
