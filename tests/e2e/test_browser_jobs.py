"""A researcher signs in through the real IdP in headless Chromium, composes
a job from a template, watches it go to Completed on the real Slurm without
reloading the page, and reads its output."""
import pytest
from django.contrib.auth import get_user_model
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from clusters import services as cluster_services
from clusters.backends import ssh
from clusters.models import PosixAccount
from jobs.models import Job, JobTemplate
from projects import services

from ..jobs.conftest import bed_env
from .test_browser import SCREENSHOTS, browser  # noqa: F401  (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def site(live_server, celery_eager):
    from pathlib import Path

    from clusters.models import CommandNode, SlurmCluster

    env = bed_env()
    ssh.close_all()
    cluster = SlurmCluster.objects.create(
        name="testbed", ssh_user=env["SLURM_TEST_SSH_USER"], ssh_private_key=Path(env["SLURM_TEST_SSH_KEY"]).read_text(),
        known_hosts=Path(env["SLURM_TEST_KNOWN_HOSTS"]).read_text(), work_prefix=env["SLURM_TEST_WORK_PREFIX"],
        slurm_conf=env["SLURM_TEST_SLURM_CONF"])
    CommandNode.objects.create(cluster=cluster, host=env["SLURM_TEST_HOST"], port=int(env["SLURM_TEST_PORTS"].split(",")[0]))
    cluster_services.partitions_sync(cluster=cluster)
    alpha = services.project_create(slug="alpha", name="Alpha Project", limits={"core_hours": 100})
    # The user exists before the first OIDC login (staff gave her a POSIX name).
    alice = get_user_model().objects.create_user("alice", email="alice@uni-a.example")
    PosixAccount.objects.create(user=alice, cluster=cluster, username="ada")
    template = JobTemplate.objects.create(
        name="Greeting", description="Says hello", script="#!/bin/bash\nsleep 2\necho Hello, {{ who }}!\n",
        parameters=[{"name": "who", "label": "Who to greet", "type": "str", "default": "world"}],
        time_limit_minutes=5)
    yield {"cluster": cluster, "alpha": alpha, "template": template}
    ssh.close_all()


def test_compose_from_template_watch_it_complete_and_read_output(live_server, browser, site):  # noqa: F811
    wait = WebDriverWait(browser, 30)
    browser.get(live_server.url + "/jobs/new/")
    wait.until(EC.element_to_be_clickable((By.ID, "oidc-login"))).click()
    wait.until(EC.title_contains("Test IdP login"))
    browser.find_element(By.NAME, "login").send_keys("alice")
    browser.find_element(By.NAME, "password").send_keys("alice-pass")
    browser.find_element(By.XPATH, "//button[contains(., 'Sign in')]").click()

    # Back on the composer (the `next` URL): pick the template.
    wait.until(EC.presence_of_element_located((By.ID, "id_template")))
    Select(browser.find_element(By.ID, "id_template")).select_by_visible_text("Greeting")
    browser.find_element(By.XPATH, "//button[normalize-space()='Use']").click()
    field = wait.until(EC.presence_of_element_located((By.ID, "id_param_who")))
    field.clear()
    field.send_keys("Nephele")
    Select(browser.find_element(By.ID, "id_project")).select_by_visible_text("Alpha Project")
    Select(browser.find_element(By.ID, "id_cluster")).select_by_visible_text("testbed")
    wait.until(EC.text_to_be_present_in_element((By.ID, "estimate"), "core-hour"))
    submit = browser.find_element(By.XPATH, "//button[normalize-space()='Submit job']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", submit)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "job-compose.png"))
    # A live estimate may still be reflowing the form: press the button itself.
    browser.execute_script("arguments[0].click()", submit)

    # The detail page; the worker (eager here) submitted it. The cluster is
    # synced as beat would; the page follows by itself (htmx polling).
    wait.until(EC.presence_of_element_located((By.ID, "job-state")))
    job = Job.objects.get()
    assert browser.current_url == live_server.url + job.get_absolute_url()
    assert job.scheduler_id
    url_before = browser.current_url
    from jobs.services import jobs_sync

    def completed(driver):
        jobs_sync(cluster=site["cluster"])
        return driver.find_element(By.ID, "job-state").get_attribute("data-state") == "completed"

    WebDriverWait(browser, 90, poll_frequency=1).until(completed)
    assert browser.current_url == url_before  # no reload, no navigation
    wait.until(EC.text_to_be_present_in_element((By.ID, "output"), "Hello, Nephele!"))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "job-detail.png"))
