"""Real-browser fixtures: `streamlit run` on a free loopback port, Debian's chromium via Playwright.

`playwright install` cannot download browsers here, so Playwright drives /usr/bin/chromium
(`make browser` installs it). Without it the tests are skipped — except under CI, where a
missing browser is a set-up failure.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import CHROMIUM_FLAGS, chromium_path


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()
