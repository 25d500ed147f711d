"""Fixtures for the whole suite: where its real test data is found.

- ``tests/data/`` travels with the repository: ``jfk.flac`` (faster-whisper's MIT test data,
  see ``tests/data/NOTICE``). Use the ``bundled_data`` fixture.
- Data the project may not redistribute (the Honda narration, CC BY-NC; its reference
  transcript; the original LaViA record) lives outside the repository, in the folder named by
  ``LAVIA_TEST_DATA`` (default ``../shared/data`` relative to the repository root). Use the
  ``external_data`` fixture: where the data is absent its tests are skipped with a message
  naming the variable, unless ``LAVIA_REQUIRE_TEST_DATA=1`` (which ``.ci/run`` sets), where
  they fail instead, so CI never skips them silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = ROOT / "tests" / "data"
EXTERNAL_DATA_ENV = "LAVIA_TEST_DATA"
REQUIRE_EXTERNAL_DATA_ENV = "LAVIA_REQUIRE_TEST_DATA"
DEFAULT_EXTERNAL_DATA = ROOT / ".." / "shared" / "data"
EXTERNAL_FILES = (
    "honda_oil_change.mp3",
    "honda_oil_change.reference.txt",
    "lavia_original_record_0_0.json",
)
# `lavia` reads every LAVIA_* environment variable as a setting (LAVIA_SECTION__KEY) and refuses
# unknown ones, so the suite's own two variables are taken out of the environment here, before
# any test runs `lavia` in-process or in a subprocess.
EXTERNAL_DATA_SETTING = os.environ.pop(EXTERNAL_DATA_ENV, "")
REQUIRE_EXTERNAL_DATA = os.environ.pop(REQUIRE_EXTERNAL_DATA_ENV, "") not in ("", "0")


def external_data_dir() -> Path:
    """``$LAVIA_TEST_DATA`` (relative to the working directory), else ``../shared/data``."""
    value = EXTERNAL_DATA_SETTING
    return (Path(value).expanduser() if value else DEFAULT_EXTERNAL_DATA).resolve()


@pytest.fixture(scope="session")
def bundled_data() -> Path:
    """The test data carried in the repository (``tests/data``)."""
    return TEST_DATA


@pytest.fixture(scope="session")
def external_data() -> Path:
    """The folder of real test data kept outside the repository, holding every file of
    ``EXTERNAL_FILES``; skips the test where it is absent (fails it under
    ``LAVIA_REQUIRE_TEST_DATA=1``)."""
    folder = external_data_dir()
    missing = [name for name in EXTERNAL_FILES if not (folder / name).is_file()]
    if missing:
        source = (
            f"{EXTERNAL_DATA_ENV}={EXTERNAL_DATA_SETTING}"
            if EXTERNAL_DATA_SETTING
            else f"{EXTERNAL_DATA_ENV} unset, so ../shared/data"
        )
        message = (
            f"external test data missing: {', '.join(missing)} not in {folder} ({source}); "
            f"set {EXTERNAL_DATA_ENV} to the folder that holds them"
        )
        if REQUIRE_EXTERNAL_DATA:
            pytest.fail(f"{message} ({REQUIRE_EXTERNAL_DATA_ENV} is set)", pytrace=False)
        pytest.skip(message)
    return folder
