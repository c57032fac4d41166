"""The run inspector in a real headless Chromium, on the example service served by uvicorn in a subprocess
(``examples/quickstart.py --serve``): a failed order shows its compensated steps in rollback order, a waiting order
updates live when a manager approves it from elsewhere, and an operator cancels one from the page.

Set ``PLAIT_SCREENSHOT=docs/images/inspector.png`` to save the README's screenshot where the README shows it
(otherwise it goes to the test's temporary folder).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Shop:
    """The example service, serving: its URL and the flows its demo left."""

    url: str
    orders: list[dict[str, str]]
    waiting: str


@pytest.fixture(scope="module")
def shop() -> Iterator[Shop]:
    from tests.conftest import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        waiting = ""
        for line in process.stdout:  # the demo prints the curl commands once it serves
            if "/events" in line:
                waiting = line.split("/flows/")[1].split("/")[0]
            if "curl -s -X POST" in line and "/cancel" in line:
                break
        else:
            raise AssertionError("the example service ended before serving")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                orders = httpx.get(f"{url}/orders").json()
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield Shop(url, orders, waiting)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver_binary = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(binary).exists() and Path(driver_binary).exists()):
        pytest.fail("chromium and chromium-driver are not installed (scripts/test.sh installs them from Debian)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="plait-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_binary), options=options)
    try:
        # A laptop's screen, exactly: the window size flag counts the (invisible) window frame too.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        yield driver
        # No script error and no Content-Security-Policy violation in any of the tests.
        logs: list[dict[str, str]] = driver.get_log("browser")  # type: ignore[no-untyped-call]  # selenium's own
        assert [entry for entry in logs if entry["level"] == "SEVERE"] == []
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(browser: WebDriver, seconds: float = 10) -> WebDriverWait[WebDriver]:
    # The page redraws a flow as its events arrive, so an element found a moment ago may have been replaced.
    return WebDriverWait(browser, seconds, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException])


def click(browser: WebDriver, by: str, selector: str) -> None:
    """Clicks an element, finding it again if the page redrew it meanwhile."""

    def clicked(b: WebDriver) -> bool:
        b.find_element(by, selector).click()
        return True

    wait(browser).until(clicked)


def text(browser: WebDriver, selector: str) -> str:
    """The text of an element as the page shows it now (read in one step, so a redraw cannot intervene)."""
    value = browser.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null", selector
    )
    return str(value)


def texts(browser: WebDriver, selector: str) -> list[str]:
    script = "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText)"
    return [str(value) for value in browser.execute_script(script, selector)]


def node_classes(browser: WebDriver, name: str) -> set[str]:
    return set(text_attr(browser, f'.graph [data-node="{name}"]', "class").split())


def text_attr(browser: WebDriver, selector: str, attribute: str) -> str:
    script = "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : ''"
    return str(browser.execute_script(script, selector, attribute) or "")


def status(browser: WebDriver) -> str:
    return text(browser, ".flow-head .pill").strip()


def open_flow(browser: WebDriver, flow_id: str, *, ended: bool) -> None:
    """Clicks the flow's row in the list (refreshing the list until it shows), then waits for its saga; for an
    ended flow, until its event stream has replayed everything."""
    row = f'#flows a[data-flow="{flow_id}"]'
    if not browser.find_elements(By.CSS_SELECTOR, row):
        click(browser, By.ID, "refresh")
    wait(browser).until(lambda b: b.find_elements(By.CSS_SELECTOR, row))
    click(browser, By.CSS_SELECTOR, row)
    wait(browser).until(lambda b: flow_id in text(b, ".flow-head .id"))
    wait(browser).until(lambda b: text_attr(b, "#detail", "data-stream") == ("ended" if ended else "open"))
    wait(browser).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".timeline li"))


def test_a_failed_order_shows_its_compensated_steps_in_rollback_order(
    shop: Shop, browser: WebDriver, tmp_path: Path
) -> None:
    browser.get(f"{shop.url}/workflows/ui")
    assert browser.find_element(By.ID, "mode").text == "operator"
    undeliverable = shop.orders[2]  # Linus's mouse to Antarctica: charged, then the shipment failed
    open_flow(browser, undeliverable["flow_id"], ended=True)
    assert status(browser) == "failed"
    assert "the carrier does not deliver to AQ" in text(browser, ".error-box")
    assert "st-failed" in node_classes(browser, "fulfill")
    for name, rank in (("charge", "1"), ("validate", "2")):
        assert "st-compensated" in node_classes(browser, name), name
        assert text(browser, f'[data-node="{name}"] .n-badge') == "\u21a9" + rank
    assert "st-skipped" in node_classes(browser, "approval")
    assert texts(browser, ".compensation li") == ["charge rolled back", "validate rolled back"]
    timeline = text(browser, ".timeline")
    assert "rollback completed charge" in timeline and "flow failed" in timeline
    assert browser.find_elements(By.XPATH, "//button[normalize-space()='Retry as a new flow']")
    click(browser, By.CSS_SELECTOR, '.graph [data-node="fulfill"]')
    wait(browser).until(lambda b: "UndeliverableError" in text(b, ".node-facts"))
    screenshot = Path(os.environ.get("PLAIT_SCREENSHOT") or tmp_path / "inspector.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot))


def test_a_waiting_order_updates_live_when_a_manager_approves_it(shop: Shop, browser: WebDriver) -> None:
    browser.get(f"{shop.url}/workflows/ui")
    open_flow(browser, shop.waiting, ended=False)
    assert status(browser) == "waiting"
    assert "st-waiting" in node_classes(browser, "approval")
    assert "st-pending" in node_classes(browser, "charge")
    assert browser.find_elements(By.XPATH, "//button[normalize-space()='Send approval']")
    browser.execute_script("window.plaitTestMarker = 'same page'")
    # The manager approves from elsewhere (the order API, as curl would): only the event stream can tell the page.
    answer = httpx.post(f"{shop.url}/orders/{shop.waiting}/approval", json={"approved": True, "manager": "Mo"})
    assert answer.status_code == 202, answer.text
    wait(browser).until(lambda b: status(b) == "completed")
    assert browser.execute_script("return window.plaitTestMarker") == "same page"  # no reload
    for name in ("approval", "charge", "fulfill", "send_email", "send_sms"):
        assert "st-completed" in node_classes(browser, name), name
    assert "signal received approval" in text(browser, ".timeline")
    assert not browser.find_elements(By.XPATH, "//button[normalize-space()='Send approval']")


def test_an_operator_cancels_a_waiting_order_from_the_page(shop: Shop, browser: WebDriver) -> None:
    order = {
        "customer_id": "cus_ops",
        "email": "ops@example.com",
        "phone": "+15550123",
        "items": [{"sku": "KB-87", "quantity": 4}],
        "payment_method": "pm_card_visa",
        "ship_to": {"name": "Ops", "line1": "1 Way", "city": "Leeds", "postal_code": "LS1", "country": "GB"},
    }
    flow_id = httpx.post(f"{shop.url}/orders", json=order).json()["flow_id"]
    browser.get(f"{shop.url}/workflows/ui")
    open_flow(browser, flow_id, ended=False)
    wait(browser).until(lambda b: status(b) == "waiting")
    click(browser, By.XPATH, "//button[normalize-space()='Cancel flow']")
    wait(browser).until(lambda b: b.find_element(By.ID, "confirm").is_displayed())
    browser.find_element(By.ID, "confirm-reason").send_keys("customer called")
    browser.find_element(By.ID, "confirm-ok").click()
    wait(browser).until(lambda b: status(b) == "cancelled")
    assert "Workflow cancelled: customer called" in text(browser, ".error-box")
    assert "st-compensated" in node_classes(browser, "validate")
    assert browser.find_elements(By.XPATH, "//button[normalize-space()='Retry as a new flow']")


def test_an_operator_undoes_a_completed_order_and_sees_the_rollbacks_arrive(shop: Shop, browser: WebDriver) -> None:
    approved = shop.orders[3]  # Margaret's monitors, approved by a manager in the demo
    browser.get(f"{shop.url}/workflows/ui")
    open_flow(browser, approved["flow_id"], ended=True)
    assert status(browser) == "completed"
    assert texts(browser, ".compensation .panel") == ["Completed: nothing was rolled back."]
    click(browser, By.XPATH, "//button[normalize-space()='Compensate\u2026']")
    wait(browser).until(lambda b: b.find_element(By.ID, "confirm").is_displayed())
    browser.find_element(By.ID, "confirm-ok").click()
    wait(browser).until(lambda b: status(b) == "compensated")
    wait(browser).until(lambda b: len(texts(b, ".compensation li")) == 3)
    assert texts(browser, ".compensation li") == [
        "fulfill rolled back",
        "charge rolled back",
        "validate rolled back",
    ]
    assert "flow compensated" in text(browser, ".timeline")
