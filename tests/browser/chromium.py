"""Debian's chromium under Playwright, the one way the browser tests (and the README's
screenshot) drive a browser: never a browser download, a fresh profile every time.

    python -m tests.browser.chromium URL OUT.png [--wait-polls N]   one screenshot of a page
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

CHROMIUM: Final = Path("/usr/bin/chromium")
ARGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
VIEWPORT: Final = {"width": 1280, "height": 900}


def missing() -> str | None:
    """Why the browser cannot run here (one line), or None if it can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed (make browser-deps: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright for Python is not installed (pip install -e '.[dev]')"
    return None


@contextlib.contextmanager
def page(profile: Path | None = None) -> Iterator[Any]:
    """A Playwright page of a chromium with a fresh user-data dir (removed afterwards unless
    given)."""
    from playwright.sync_api import sync_playwright

    own = profile is None
    user_data = Path(tempfile.mkdtemp(prefix="medchain-chromium-")) if own else profile
    assert user_data is not None
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(user_data),
                executable_path=str(CHROMIUM),
                headless=True,
                args=list(ARGS),
                viewport=VIEWPORT,  # type: ignore[arg-type]
            )
            try:
                yield context.pages[0] if context.pages else context.new_page()
            finally:
                context.close()
    finally:
        if own:
            shutil.rmtree(user_data, ignore_errors=True)


def screenshot(url: str, out: Path, wait_polls: int = 5, timeout_ms: int = 30_000) -> None:
    """Load the dashboard at ``url``, wait until it has drawn ``wait_polls`` ticks, save it."""
    with page() as p:
        p.goto(url, timeout=timeout_ms)
        p.wait_for_function(
            f"Number(document.body.dataset.polls || 0) >= {wait_polls}", timeout=timeout_ms
        )
        p.screenshot(path=str(out), full_page=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--wait-polls", type=int, default=5)
    args = parser.parse_args()
    reason = missing()
    if reason:
        print(f"cannot take a screenshot: {reason}", file=sys.stderr)
        return 1
    screenshot(args.url, args.out, args.wait_polls)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
