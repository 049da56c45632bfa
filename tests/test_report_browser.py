"""The report page in a real headless browser: it loads from disk with no console errors and every image decodes.

Needs Chromium with its driver (Debian: ``apt-get install chromium chromium-driver``) and ``selenium``;
skipped cleanly when either is missing. Nothing is fetched from the network: the page is self-contained and
the browser runs with background networking, updates and sync switched off.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest

from .test_analysis import tiny_report

CHROME_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVER_NAMES = ("chromedriver",)


def _find(names: tuple[str, ...]) -> str | None:
    return next((p for p in (shutil.which(n) for n in names) if p), None)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chrome, driver = _find(CHROME_NAMES), _find(DRIVER_NAMES)
    if chrome is None or driver is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="astrovader-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1024"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))
    except Exception as exc:  # a broken local browser install is an environment problem, not a report bug
        pytest.skip(f"could not start headless chromium: {exc}")
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_report_loads_without_errors_and_all_images_decode(browser, tmp_path_factory):
    report = tiny_report(tmp_path_factory)
    browser.get(report.resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    assert browser.title.startswith("AstroVaDEr report")
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
    assert len(images) >= 15
    broken = [alt for alt, complete, w, h in images if not (complete and w > 0 and h > 0)]
    assert not broken, f"images that did not decode: {broken}"
    errors = [e for e in browser.get_log("browser") if e.get("level") in ("SEVERE", "ERROR")]
    assert not errors, f"console errors: {errors}"
    # every table-of-contents link points at an element of the page
    missing = browser.execute_script(
        "return Array.from(document.querySelectorAll('nav a')).map(a => a.getAttribute('href'))"
        ".filter(h => !document.getElementById(h.slice(1)));")
    assert not missing


def test_every_report_section_opens_with_its_introduction(browser, tmp_path_factory):
    report = tiny_report(tmp_path_factory)
    browser.get(report.resolve().as_uri())
    sections = browser.execute_script(
        "return Array.from(document.querySelectorAll('section')).map(s => [s.id, "
        "s.children.length > 1 && s.children[1].className === 'intro' ? s.children[1].innerText : '']);")
    assert len(sections) >= 8
    short = [sid for sid, intro in sections if len(intro) < 60]
    assert not short, f"sections without a two-line introduction: {short}"
    ids = [sid for sid, _ in sections]
    assert ids[0] == "components" and "next" in ids
    # the banner saying which galaxies were analysed is on screen without scrolling
    top = browser.execute_script("return document.querySelector('.banner').getBoundingClientRect().top;")
    assert 0 <= top < 400
