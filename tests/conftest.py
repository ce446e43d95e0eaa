"""Shared fixtures. Area-specific fixtures live in their own modules, registered here."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

pytest_plugins = ["tests.pki_fixtures", "tests.quant_fixtures", "tests.results_fixtures"]


def _temporarily(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    yield
    if old is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = old


@pytest.fixture(scope="session", autouse=True)
def _private_hash_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The host's upload hash cache goes to a temp file, never the user's ~/.cache (also for
    the CLI subprocesses the tests start, which inherit the environment)."""
    yield from _temporarily("EDGETUNE_HASH_CACHE",
                            str(tmp_path_factory.mktemp("hashcache") / "hashes.json"))


@pytest.fixture(scope="session", autouse=True)
def _private_results_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Results the tests record go to a temp database, never the user's (also for the CLI
    subprocesses the tests start). Tests about the database's location unset it."""
    yield from _temporarily("EDGETUNE_DB",
                            str(tmp_path_factory.mktemp("results") / "results.db"))
