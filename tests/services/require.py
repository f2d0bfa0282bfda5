"""Skip, or fail, a test that needs an outside service (PostgreSQL, SLURM).

Locally a missing service skips the test with the command that starts it. Where the services
were started on purpose (``make test`` on a root Debian box, i.e. CI), TPO_REQUIRE_SERVICES=1
turns a missing one into a failure, so that the SLURM and PostgreSQL tests cannot silently
stop running there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def service_or_skip(name: str, available: bool, how: str) -> None:
    if available:
        return
    if os.environ.get("TPO_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required here (TPO_REQUIRE_SERVICES=1) but unavailable: {how}")
    pytest.skip(f"no {name}: {how}")


def postgres_url() -> str | None:
    """TPO_TEST_PG_URL, else the URL tests/services/postgres.sh wrote when it started."""
    url = os.environ.get("TPO_TEST_PG_URL")
    if url:
        return url
    f = Path(os.environ.get("PG_STATE", "/tmp/tpo-pg")) / "url"
    return f.read_text().strip() if f.exists() else None
