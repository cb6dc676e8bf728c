"""Browser tests: a real cluster (the integration fixtures), the dashboard as a user runs it,
and Debian's chromium driven by Playwright. Marked ``integration`` (they start processes) and
``browser``; without chromium they skip, saying why in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import make_cluster  # noqa: F401  (the fixture, shared)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.browser)
