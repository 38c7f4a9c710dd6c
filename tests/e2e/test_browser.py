"""A real browser (Debian's headless Chromium via selenium) signs in through
the test bed's OIDC provider and sees the dashboard."""
import os
import tempfile
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from projects import services

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = Path(__file__).resolve().parents[2] / ".testbed" / "screenshots"


@pytest.fixture
def browser():
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
    profile = tempfile.mkdtemp(prefix="nephele-chromium-")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-quic", f"--user-data-dir={profile}", "--window-size=1280,900",
    ):
        options.add_argument(flag)
    service = Service(executable_path=os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_browser_signs_in_through_the_provider_and_sees_the_dashboard(live_server, browser):
    services.project_create(slug="alpha", name="Alpha Project", limits={"cores": 8, "instances": 2})
    wait = WebDriverWait(browser, 20)

    browser.get(live_server.url + "/")
    # Not signed in: the one login page, offering both ways in.
    wait.until(EC.presence_of_element_located((By.ID, "oidc-login")))
    assert "Sign in to" in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.find_element(By.ID, "id_password")  # the local-account form is there too
    browser.find_element(By.ID, "oidc-login").click()

    # The provider's own form.
    wait.until(EC.title_contains("Test IdP login"))
    browser.find_element(By.NAME, "login").send_keys("alice")
    browser.find_element(By.NAME, "password").send_keys("alice-pass")
    browser.find_element(By.XPATH, "//button[contains(., 'Sign in')]").click()

    # The click returns before the redirects finish: wait for our dashboard.
    wait.until(EC.url_to_be(live_server.url + "/"))
    heading = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "main h1")))
    assert heading.text == "Welcome, Alice"
    card = browser.find_element(By.ID, "proj-alpha")
    assert card.text == "Alpha Project"
    bars = browser.find_elements(By.CSS_SELECTOR, "[role=progressbar]")
    assert len(bars) == 9  # one per resource
    # The user menu opens (Bootstrap's JS loaded from static/, allowed by the CSP).
    browser.find_element(By.ID, "user-menu").click()
    wait.until(EC.visibility_of_element_located((By.LINK_TEXT, "API token")))
    # Nothing of ours failed to load or was blocked (the IdP's own page may lack a favicon).
    idp = os.environ["OIDC_OP_ISSUER"]
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and idp not in e["message"]]
    assert errors == [], errors
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "dashboard.png"))
