"""Debian's Chromium, headless, driven by Playwright through its executable path (no browser download)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",  # the console's video plays with sound without a click
    "--disable-features=WebRtcHideLocalIpsWithMdns",  # host candidates as addresses (no mDNS in a sandbox)
]  # fmt: skip


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def browser_page(width: int = 1440, height: int = 900) -> Iterator[Any]:
    """A fresh page in a headless Chromium; the browser is closed afterwards."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    assert path is not None, "Debian's chromium is not installed (scripts/install-test-deps.sh installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()
