"""A fake IAM (fphtr.data.iam_fixture), generated once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fphtr.data.iam_fixture import FixtureInfo, inject_broken, make_iam_fixture

# 6 forms (4 train / 1 val / 1 test in the aachen lists), pages at half IAM's resolution.
FIXTURE = {"forms": 6, "seed": 0, "scale": 0.5}


def session_fixture(tmp_path_factory: pytest.TempPathFactory) -> FixtureInfo:
    """The session's clean fixture (made by the first caller, reused by the others)."""
    return make_iam_fixture(tmp_path_factory.getbasetemp() / "iam-fixture", **FIXTURE)


@pytest.fixture(scope="session")
def iam_fixture(tmp_path_factory) -> FixtureInfo:
    return session_fixture(tmp_path_factory)


@pytest.fixture(scope="session")
def broken_fixture(tmp_path_factory, iam_fixture) -> FixtureInfo:
    """A copy of the fixture damaged in known places (see `inject_broken`)."""
    root = tmp_path_factory.getbasetemp() / "iam-broken"
    if not root.exists():
        shutil.copytree(iam_fixture.root, root)
        inject_broken(root)
    return FixtureInfo.load(root)


def aachen_dir(info: FixtureInfo) -> Path:
    return Path(info.root) / "splits" / "aachen"
