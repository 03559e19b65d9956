"""Fixtures for every test package."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _device_cache(tmp_path_factory: pytest.TempPathFactory):
    """``--device auto`` caches its choices under the user's cache dir; tests keep theirs in a temporary one
    (inherited by the subprocesses they start), never in ``~/.cache``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEAE_CACHE_DIR", str(tmp_path_factory.mktemp("edgeae-cache")))
        yield
