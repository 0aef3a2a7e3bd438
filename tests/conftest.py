"""Shared fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

# The repository is checked out next to shared/, which holds the real test material (see shared/data/MANIFEST.md).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test material not found at {SHARED_DATA} (expected the checkout next to shared/)")
    return SHARED_DATA
