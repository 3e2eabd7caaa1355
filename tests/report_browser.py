"""Open an HTML file in headless Chromium (selenium + chromedriver) and report what a reader would see.

Used by tests/test_report.py. Chromium comes from Debian's ``chromium`` and ``chromium-driver`` packages.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

_IMAGES_JS = """
const imgs = Array.from(document.images);
return imgs.map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
                       src_prefix: i.src.slice(0, 22)}));
"""


def chromium_binaries() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, or None when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@dataclass
class PageCheck:
    """What Chromium saw: title, images (natural sizes), severe console messages and JS errors."""

    title: str
    images: list[dict[str, Any]]
    severe: list[str]
    js_errors: list[str]
    text: str

    @property
    def broken_images(self) -> list[dict[str, Any]]:
        return [i for i in self.images if not i["complete"] or i["width"] <= 0 or i["height"] <= 0]

    @property
    def ok(self) -> bool:
        return not self.severe and not self.js_errors and not self.broken_images and bool(self.images)


class Browser:
    """One headless Chromium session (its own fresh --user-data-dir), reused for several pages."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        found = chromium_binaries()
        if found is None:
            raise RuntimeError("chromium and chromedriver are not installed")
        browser, driver = found
        self._profile = tempfile.mkdtemp(prefix="prunekit-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self._profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(executable_path=driver), options=options)
        self.driver.set_page_load_timeout(60)

    def check(self, path: str | Path) -> PageCheck:
        d = self.driver
        d.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument",
            {
                "source": "window.__errors = []; window.addEventListener('error', e => "
                "window.__errors.push(String(e.message || (e.target && e.target.src || 'error').slice(0, 60))),"
                " true);"
            },
        )
        d.get(Path(path).resolve().as_uri())
        d.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null))).then(() => done(true));"
        )
        images = d.execute_script(_IMAGES_JS)
        logs = d.get_log("browser")
        severe = [entry["message"] for entry in logs if entry.get("level") == "SEVERE"]
        js_errors = d.execute_script("return window.__errors || []")
        text = d.execute_script("return document.body.innerText")
        return PageCheck(title=d.title, images=images, severe=severe, js_errors=list(js_errors), text=text)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)
