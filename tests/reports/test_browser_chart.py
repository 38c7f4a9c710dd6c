"""A real browser (headless Chromium) draws the usage chart under the
portal's Content-Security-Policy: Chart.js from static/vendor, the data from
json_script, no inline script, nothing blocked."""
import pytest
from django.conf import settings
from django.test import Client
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.test_browser import SCREENSHOTS, browser  # noqa: F401  (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def sign_in(browser, live_server, user):  # noqa: F811
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    browser.get(live_server.url + "/healthz")
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    browser.add_cookie({"name": settings.SESSION_COOKIE_NAME, "value": session, "path": "/"})


@pytest.mark.parametrize("path", ["/reports/projects/alpha/?period=week", "/reports/me/"])
def test_chart_is_drawn_under_the_csp(live_server, browser, usage, path):  # noqa: F811
    sign_in(browser, live_server, usage.alice)
    browser.get(live_server.url + path)
    wait = WebDriverWait(browser, 20)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "canvas[data-chart]")))
    drawn = wait.until(lambda b: b.execute_script(
        "const c = document.querySelector('canvas[data-chart]');"
        "const chart = window.Chart && window.Chart.getChart(c);"
        "return chart ? chart.data.datasets.map(d => d.data.reduce((a, b) => a + b, 0)) : null;"))
    expected = 19.25 if "alpha" in path else 5.0
    assert drawn[0] == pytest.approx(expected)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    browser.execute_script(
        "document.querySelector('canvas[data-chart]').scrollIntoView({block: 'center', behavior: 'instant'})")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / ("report-project.png" if "alpha" in path else "report-me.png")))
