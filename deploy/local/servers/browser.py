"""The browser of the browser tests and `make screenshots`: Debian's Chromium."""

import shutil
from pathlib import Path

from .common import StackError, apt_install, wait_for_apt

BROWSER_PACKAGES = ("chromium", "fonts-ipafont-gothic")  # the screens' Japanese in a screenshot


def ensure_browser():
    """Debian's Chromium, for the browser tests (Playwright cannot download one here), and a
    Japanese font for `make screenshots`."""
    if shutil.which("chromium") and Path("/usr/share/fonts/opentype/ipafont-gothic").is_dir():
        return
    wait_for_apt()
    apt_install(BROWSER_PACKAGES)
    if not shutil.which("chromium"):
        raise StackError("chromium installed, but /usr/bin/chromium is not found")
