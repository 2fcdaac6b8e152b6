"""The web pages in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, via selenium).

One registry (SQLite) and one browser serve the whole module: each page load costs real
time on a small machine. Without Chromium, its driver or selenium the module is skipped
locally and fails under ``CI``, which must run it (``.ci/run`` installs them).

Set ``TVREG_WEB_SCREENSHOTS=1`` to refresh the README's screenshots in ``docs/img/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Api, Registry
from web_helpers import populate

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1000",
)  # fmt: skip


def _browser_or_skip() -> None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing = "selenium (pip install 'tvreg[test]')"
    else:
        missing = ", ".join(n for n, p in (("chromium", CHROMIUM), ("chromedriver", DRIVER)) if p is None)
    if missing:
        reason = f"browser tests need {missing}; install Debian's `chromium` and `chromium-driver`"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the browser tests.")
        pytest.skip(reason)


def _chrome(*, javascript: bool = True):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='tvreg-chromium-')}")
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def site(server_spawner, server_artifacts, tmp_path_factory) -> Iterator[tuple[Registry, object]]:
    _browser_or_skip()
    root = tmp_path_factory.mktemp("web-site")
    reg = Registry(
        backend="sqlite",
        data_dir=root / "registry",
        database_url=f"sqlite:///{root / 'registry' / 'registry.db'}",
        spawner=server_spawner,
    )
    reg.start()
    try:
        yield reg, populate(reg, Api(reg), server_artifacts, root)
    finally:
        reg.close()


@pytest.fixture(scope="module")
def browser(site):
    driver = _chrome()
    try:
        yield driver
    finally:
        driver.quit()


def _by(css: str):
    from selenium.webdriver.common.by import By

    return By.CSS_SELECTOR, css


def _wait(driver, css: str):
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 30).until(ec.presence_of_element_located(_by(css)))


def _click(driver, css: str, then: str) -> None:
    """Click ``css`` and wait until the next page shows ``then``.

    On a loaded machine the page can still be settling when the lookup runs, and Chromium
    answers "node ... does not belong to the document" for an element of the page being
    replaced; the lookup and click are retried on that (as on a stale element) for a while.
    """
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    deadline = time.monotonic() + 30
    while True:
        try:
            old = driver.find_element(*_by("html"))
            driver.find_element(*_by(css)).click()
            break
        except (StaleElementReferenceException, WebDriverException) as exc:
            settling = isinstance(exc, StaleElementReferenceException) or "does not belong to the document" in str(exc)
            if not settling or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    WebDriverWait(driver, 30).until(ec.staleness_of(old))
    _wait(driver, then)


def _screenshot(driver, name: str, tmp_path: Path) -> None:
    folder = ROOT / "docs" / "img" if os.environ.get("TVREG_WEB_SCREENSHOTS") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(folder / f"web-{name}.png"))


def _text(driver, css: str) -> str:
    return driver.find_element(*_by(css)).text


def _no_dialog(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 - raises when no dialog is open


def test_click_through_front_search_skill_version_base_and_matrix(site, browser, tmp_path):
    reg, pub = site
    browser.get(reg.url + "/")
    assert browser.title == "tvreg registry"
    assert "3 skills" in _text(browser, "#counts")
    _screenshot(browser, "front", tmp_path)
    browser.find_element(*_by("main #q")).send_keys("science")
    _click(browser, "#search-button", "#results")
    assert _text(browser, "#total") == "1 skill found"
    _click(browser, "#results a.skill-link", "#skill-name")
    assert browser.title == "alice/science · tvreg"
    assert _text(browser, "#install-cmd") == "tvreg install alice/science"
    assert _text(browser, "#install-line-cmd") == "tvreg install alice/science@^1"
    assert browser.find_elements(*_by("div.cmd button.copy")), "the copy button is added by the page's script"
    assert browser.find_element(*_by("#card h1")).text == "Science"
    assert browser.find_elements(*_by("svg.profile rect.bar"))
    calibration = _text(browser, "#calibration")  # 1.1.0 was coded by calibrated `auto`
    assert calibration.startswith("lossy, retention ") and "% at 95%) on 12 held-out texts (target 90%; " in calibration
    row = _text(browser, "#versions tbody tr:first-child td.fidelity")
    assert row == calibration.split(" (target")[0]
    assert _text(browser, "#versions tbody tr:last-child td.fidelity") == "lossless"  # 1.0.0: exact
    _screenshot(browser, "skill", tmp_path)
    _click(browser, "#versions a.version-link[href$='/1.0.0']", "#yanked-banner")
    assert browser.title == "alice/science@1.0.0 · tvreg"
    assert _text(browser, "#install-cmd") == "tvreg install alice/science@1.0.0"
    _click(browser, "#base-link", "#base-skills")
    assert _text(browser, "#fingerprint") == pub.base
    for pick in ("alice/science@1.1.0", "alice/coding@1.0.0"):
        browser.find_element(*_by(f"input[value='{pick}']")).click()
    assert not browser.find_element(*_by("input[value='alice/hostile@1.0.0']")).is_enabled()  # no sketch
    _click(browser, "#compare-button", "#matrix")
    cells = browser.find_elements(*_by("#matrix td"))
    assert len(cells) == 4 and sum(c.text == "—" for c in cells) == 2
    assert all("cos" in c.text and "sign" in c.text and "ratio" in c.text for c in cells if c.text != "—")
    assert browser.find_elements(*_by("#findings li"))
    _screenshot(browser, "base", tmp_path)


def test_hostile_inputs_render_inert(site, browser):
    reg, _pub = site
    for path, title in (("/alice/hostile", "alice/hostile · tvreg"), ("/alice/science/1.0.0", "alice/science@1.0.0 · tvreg")):
        browser.get(reg.url + path)
        _wait(browser, "#skill-name")
        _no_dialog(browser)
        assert browser.title == title
        assert browser.execute_script("return document.scripts.length") == 1
        with_handlers = browser.execute_script(
            "return Array.from(document.querySelectorAll('*')).filter(e => "
            "Array.from(e.attributes).some(a => a.name.startsWith('on'))).length"
        )
        assert with_handlers == 0
        protocols = set(browser.execute_script("return Array.from(document.links).map(a => a.protocol)"))
        assert protocols <= {"http:", "https:"}, protocols
        body = browser.find_element(*_by("body")).text
        assert "\u202e" not in body and "\x1b" not in body
    browser.get(reg.url + "/alice/hostile")
    assert '<script>alert("desc")</script>' in _text(browser, "#description")
    assert "⟨U+202E⟩gnp.exe" in _text(browser, "#description")
    assert "<script>alert('card')</script>" in _text(browser, "#card")
    assert browser.find_element(*_by("#card a")).get_attribute("rel") == "nofollow noopener"
    assert len(browser.page_source) < 300_000


def test_pages_work_with_javascript_disabled(site, tmp_path):
    reg, pub = site
    driver = _chrome(javascript=False)
    try:
        driver.get(reg.url + "/")
        driver.find_element(*_by("main #q")).send_keys("coding")
        _click(driver, "#search-button", "#results")
        _click(driver, "#results a.skill-link", "#skill-name")
        assert _text(driver, "#install-cmd") == "tvreg install alice/coding"
        assert not driver.find_elements(*_by("button.copy")), "JavaScript is off, so no copy button"
        driver.get(f"{reg.url}/bases/{pub.base}")
        for pick in ("alice/science@1.1.0", "alice/coding@1.0.0"):
            driver.find_element(*_by(f"input[value='{pick}']")).click()
        _click(driver, "#compare-button", "#matrix")
        assert len(driver.find_elements(*_by("#matrix td"))) == 4
    finally:
        driver.quit()


def test_a_private_skill_appears_only_while_signed_in(site, browser):
    reg, pub = site
    browser.delete_all_cookies()
    browser.get(reg.url + "/lab/secret")
    assert _text(browser, "h1") == "Not found"
    missing_text = _text(browser, "main")
    browser.get(reg.url + "/lab/absent")
    assert _text(browser, "main") == missing_text.replace("lab/secret", "lab/absent")
    browser.get(reg.url + "/lab/secret")
    _click(browser, "#sign-in", "#token")
    browser.find_element(*_by("#token")).send_keys(pub.bob)
    _click(browser, "#sign-in-button", "#skill-name")  # back to the page we came from
    assert browser.title == "lab/secret · tvreg" and "top secret skill" in _text(browser, "#description")
    cookie = browser.get_cookie("tvreg_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: invisible to scripts
    _click(browser, "#sign-out", "#counts")
    browser.get(reg.url + "/lab/secret")
    assert _text(browser, "h1") == "Not found"
    browser.get(reg.url + "/lab/secret")
    _click(browser, "#sign-in", "#token")
    browser.find_element(*_by("#token")).send_keys(pub.bob)
    _click(browser, "#sign-in-button", "#skill-name")
    reg.admin("revoke-token", "bob", "--name", "web")
    browser.refresh()
    _wait(browser, "h1")
    assert _text(browser, "h1") == "Not found"
    assert browser.find_elements(*_by("#sign-in"))
