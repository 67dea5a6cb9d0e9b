"""Drive the quickstart page in headless Chromium, as a person would.

Loads BASE_URL/, fills in the form, presses "Start report" and waits (on the
page's own signal, `#status[data-status]`, never a fixed sleep) until the
page shows the outcome of its plain `fetch()`. Two cases: a 2 s report, and
a 1 s report with "Fail" ticked.

Uses Debian's /usr/bin/chromium and /usr/bin/chromedriver, both given by
path, so that Selenium Manager never tries to download a browser or driver.

usage: browser_report.py BASE_URL [SCREENSHOT_PNG]
prints: one JSON object per case on stdout, with the keys
  case, status (the page's data-status), status_text, result (the text of
  #result), hops (the statuses of the redirects the browser followed for
  POST /reports, from Chromium's network log) and console (the page's
  console messages at warning level or above).
The report case's page is saved to SCREENSHOT_PNG, the failing case's to
the same name with "-fail" before ".png".
exit status: 0 when both cases ran (the caller judges what they showed),
  2 when a prerequisite is missing, 1 on any other error.
"""

import json
import os
import shutil
import sys
import tempfile

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = (
    "run .ci/install-browser.sh, or: apt-get install -y chromium chromium-driver"
    " && python3 -m pip install selenium"
)
# Seconds to wait for the page to show an outcome; a case takes 1 to 3 s.
OUTCOME_TIMEOUT = 60

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as error:
    print(f"missing prerequisite: Python selenium ({error}); {INSTALL_HINT}", file=sys.stderr)
    sys.exit(2)


def start_browser(profile: str) -> "webdriver.Chrome":
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1000,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(OUTCOME_TIMEOUT)
    return driver


def redirect_hops(driver: "webdriver.Chrome") -> list:
    """The statuses of the redirects followed for POST /reports and its polls,
    read from (and so clearing) Chromium's performance log."""
    hops = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") != "Network.requestWillBeSent":
            continue
        redirect = message["params"].get("redirectResponse")
        if redirect is not None and "/reports" in redirect.get("url", ""):
            hops.append(redirect["status"])
    return hops


def console_messages(driver: "webdriver.Chrome") -> list:
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry.get("level") in ("WARNING", "SEVERE")
    ]


def run_case(driver, base: str, case: str, seconds: str, fail: bool, screenshot: str) -> dict:
    driver.get(f"{base}/")
    # Clear the logs of the page load, so that only this case's requests count.
    driver.get_log("performance")
    wait = WebDriverWait(driver, OUTCOME_TIMEOUT)
    field = wait.until(EC.element_to_be_clickable((By.ID, "seconds")))
    field.clear()
    field.send_keys(seconds)
    checkbox = driver.find_element(By.ID, "fail")
    if checkbox.is_selected() != fail:
        checkbox.click()
    driver.find_element(By.ID, "start").click()
    try:
        status = wait.until(
            EC.presence_of_element_located((By.CSS_SELECTOR, "#status[data-status]"))
        )
    except TimeoutException:
        status = driver.find_element(By.ID, "status")
    outcome = {
        "case": case,
        "status": status.get_attribute("data-status"),
        "status_text": status.text,
        "result": driver.find_element(By.ID, "result").text,
        "hops": redirect_hops(driver),
        "console": console_messages(driver),
    }
    if screenshot:
        driver.save_screenshot(screenshot)
        outcome["screenshot"] = screenshot
    return outcome


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 1
    base = sys.argv[1].rstrip("/")
    screenshot = sys.argv[2] if len(sys.argv) == 3 else ""
    for path, what in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            print(f"missing prerequisite: {path} (Debian's {what}); {INSTALL_HINT}", file=sys.stderr)
            return 2
    # Selenium Manager must never go looking for anything: both paths are given.
    os.environ["SE_OFFLINE"] = "true"
    profile = tempfile.mkdtemp(prefix="async-op-chromium-")
    driver = None
    try:
        driver = start_browser(profile)
        fail_shot = screenshot[: -len(".png")] + "-fail.png" if screenshot.endswith(".png") else ""
        for case, seconds, fail, shot in (
            ("report", "2", False, screenshot),
            ("fail", "1", True, fail_shot),
        ):
            outcome = run_case(driver, base, case, seconds, fail, shot)
            print(json.dumps(outcome), flush=True)
        return 0
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
