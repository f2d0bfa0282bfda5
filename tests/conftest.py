"""Shared fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from services.require import postgres_url, service_or_skip
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


@pytest.fixture(scope="session")
def smoke_db(tmp_path_factory, pytestconfig) -> str:
    """URL of a results DB holding the fig3 and fig4 presets at smoke scale, made by the real
    entry point (``python -m tpo_sweeps -m experiment=... scale=smoke``). Treat it as
    read-only."""
    from tpo_sweeps import db

    tmp = tmp_path_factory.mktemp("smoke_db")
    url = f"sqlite:///{tmp}/smoke.sqlite"
    # the schema exists before the two sweeps below start writing in parallel
    db.connect(url).dispose()
    # JAX's persistent compilation cache in pytest's cache folder: reruns skip XLA compiles
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(pytestconfig.cache.mkdir("jax_compilation_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tpo_sweeps",
                "-m",
                f"experiment={exp}",
                "scale=smoke",
                f"db.url={url}",
            ],
            cwd=tmp,  # Hydra's multirun/ folder goes here
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for exp in ("fig3_tabular_single", "fig4_tabular_multi")
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
    return url


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database on the test server (skipped, or required by
    TPO_REQUIRE_SERVICES=1, when none runs), dropped afterwards."""
    base = postgres_url()
    service_or_skip(
        "PostgreSQL", base is not None, "start one with tests/services/postgres.sh start"
    )
    name = f"tpo_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:
        admin.dispose()
        service_or_skip("PostgreSQL", False, f"{base} is not usable: {e}")
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
