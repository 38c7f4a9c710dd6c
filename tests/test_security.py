"""Security headers, CSRF, cookies, local login with its throttling, and
password reset."""
import os
import re
import subprocess
import sys

import pytest
from django.conf import settings
from django.core import mail
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from projects.models import Invitation
from tests.conftest import PASSWORD

LOGIN = "/accounts/login/"


@pytest.fixture(autouse=True)
def _fresh_cache():
    """allauth keeps its rate-limit counters in the cache."""
    cache.clear()
    yield
    cache.clear()


def csp_directives(response):
    header = response["Content-Security-Policy"]
    directives = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    return directives


# --- Headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "who, path",
    [(None, LOGIN), (None, "/accounts/password/reset/"), (None, "/accounts/signup/"), ("alice", "/"),
     ("alice", "/projects/alpha/"), ("alice", "/account/api-token/"), ("alice", "/api/docs/"),
     ("alice", "/servers/"), ("alice", "/servers/new/"), ("alice", "/volumes/"), ("alice", "/volumes/new/"),
     ("alice", "/account/ssh-keys/")],
)
def test_content_security_policy(cast, client_for, who, path):
    client = client_for(getattr(cast, who)) if who else Client()
    response = client.get(path)
    assert response.status_code == 200
    directives = csp_directives(response)
    assert "'self'" in directives["script-src"]
    assert "'unsafe-inline'" not in directives["script-src"]
    assert "'unsafe-eval'" not in directives["script-src"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["object-src"] == ["'none'"]
    # The pages must then have no inline scripts or event handlers, which the policy would block.
    html = response.content.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert not re.search(r"\son[a-z]+\s*=\s*[\"']", html)
    assert not re.search(r"<(script|link)[^>]+(src|href)=\"(https?:)?//", html)


def test_frame_and_sniffing_headers(cast, client_for):
    response = client_for(cast.alice).get("/")
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"


# --- CSRF -------------------------------------------------------------------------------------------


def test_post_without_csrf_token_is_refused(cast):
    client = Client(enforce_csrf_checks=True)
    client.force_login(cast.alice, backend="django.contrib.auth.backends.ModelBackend")
    url = reverse("projects:invite", args=["alpha"])
    response = client.post(url, {"email": "csrf@example.org", "role": "manager"})
    assert response.status_code == 403
    assert not Invitation.objects.exists()

    # With the token from the page the same request goes through: the 403 was CSRF.
    client.get(reverse("projects:detail", args=["alpha"]))
    token = client.cookies[settings.CSRF_COOKIE_NAME].value
    response = client.post(url, {"email": "csrf@example.org", "role": "manager", "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert Invitation.objects.filter(email="csrf@example.org").exists()


def test_htmx_pages_send_the_csrf_token_in_a_header(cast, client_for):
    html = client_for(cast.alice).get("/").content.decode()
    assert re.search(r"hx-headers='\{\"X-CSRFToken\": \"[A-Za-z0-9]{32,}\"\}'", html)


# --- Cookies -------------------------------------------------------------------------------------------


def test_session_cookie(cast):
    client = Client()
    response = client.post(LOGIN, {"login": "alice@example.org", "password": PASSWORD})
    assert response.status_code == 302
    assert settings.SESSION_COOKIE_NAME != "_session"
    assert "_session" not in response.cookies
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"


def _settings_in_subprocess(extra_env):
    env = {k: v for k, v in os.environ.items() if k not in {"SECURE_COOKIES"}}
    env.update(extra_env)
    env["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_secure_cookies_follow_the_environment():
    assert settings.SESSION_COOKIE_SECURE is False  # the test bed runs on plain http
    assert _settings_in_subprocess({"SECURE_COOKIES": "true"}) == ["True", "True"]
    assert _settings_in_subprocess({"SECURE_COOKIES": "false"}) == ["False", "False"]
    assert _settings_in_subprocess({}) == ["False", "False"]


# --- Local login ------------------------------------------------------------------------------------------


def login(client, email, password):
    return client.post(LOGIN, {"login": email, "password": password})


def form_errors(response):
    return " ".join(response.context["form"].non_field_errors())


def test_local_login_lands_on_the_dashboard(cast):
    client = Client()
    response = client.post(LOGIN, {"login": "Alice@Example.org", "password": PASSWORD}, follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == reverse("dashboard")
    assert response.context["user"] == cast.alice
    assert "Welcome, Alice" in response.content.decode()
    assert [p.slug for p in response.context["projects"]] == ["alpha"]


def test_local_login_honours_next(cast):
    response = Client().post(LOGIN, {"login": "alice@example.org", "password": PASSWORD, "next": "/projects/alpha/"})
    assert response.status_code == 302 and response.url == "/projects/alpha/"
    data = {"login": "alice@example.org", "password": PASSWORD, "next": "https://evil.example/"}
    offsite = Client().post(LOGIN, data)
    assert offsite.status_code == 302 and not offsite.url.startswith("https://evil")


def test_wrong_password_is_refused(cast):
    client = Client()
    response = login(client, "alice@example.org", "wrong-password")
    assert response.status_code == 200
    assert "not correct" in form_errors(response)
    assert "_auth_user_id" not in client.session
    assert client.get("/").status_code == 302


def test_failed_logins_are_throttled_per_address(cast):
    client = Client()
    for _ in range(5):
        assert "not correct" in form_errors(login(client, "alice@example.org", "wrong-password"))
    refused = login(client, "alice@example.org", PASSWORD)
    assert refused.status_code == 200
    assert "Too many failed login attempts" in form_errors(refused)
    assert "_auth_user_id" not in client.session
    # Another address from the same client is not locked out.
    other = login(Client(), "bob@example.org", PASSWORD)
    assert other.status_code == 302


def test_failed_logins_are_throttled_per_ip(cast):
    client = Client()
    for i in range(10):
        login(client, f"nobody{i}@example.org", "wrong-password")
    refused = login(client, "bob@example.org", PASSWORD)
    assert "Too many failed login attempts" in form_errors(refused)


def test_admin_login_form_cannot_bypass_the_throttle(cast):
    for _ in range(5):
        login(Client(), "stella@example.org", "wrong-password")
    # Django's own admin form would log in without allauth's counters: it is
    # not served, a POST there only leads to the one login page.
    client = Client()
    response = client.post("/admin/login/", {"username": "stella", "password": PASSWORD, "next": "/admin/"})
    assert response.status_code == 302
    assert response.url.startswith(LOGIN)
    assert "_auth_user_id" not in client.session
    assert "Too many failed login attempts" in form_errors(login(client, "stella@example.org", PASSWORD))


# --- Password reset -------------------------------------------------------------------------------------------


def test_password_reset_sends_a_link_for_a_known_address(cast):
    response = Client().post(reverse("account_reset_password"), {"email": "ALICE@example.org"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["alice@example.org"]
    link = re.search(r"https?://\S+/accounts/password/reset/key/\S+/", message.body)
    assert link, message.body

    # The link leads to a form that sets the new password.
    client = Client()
    path = re.sub(r"^https?://[^/]+", "", link.group(0))
    page = client.get(path, follow=True)
    assert page.status_code == 200
    form_url = page.redirect_chain[-1][0] if page.redirect_chain else path
    done = client.post(form_url, {"password1": "a-new-Passw0rd-42", "password2": "a-new-Passw0rd-42"})
    assert done.status_code == 302
    cast.alice.refresh_from_db()
    assert cast.alice.check_password("a-new-Passw0rd-42")


def test_password_reset_for_an_unknown_address_sends_no_link(cast):
    response = Client().post(reverse("account_reset_password"), {"email": "stranger@example.org"})
    assert response.status_code == 302  # the same answer as for a known address
    assert not any("/accounts/password/reset/key/" in m.body for m in mail.outbox)


# --- Invitations on local login ------------------------------------------------------------------------------


@pytest.mark.parametrize("verified", [True, False])
def test_local_login_honours_invitations_only_for_a_verified_address(cast, verified):
    """Anyone can sign up with any address; only a verified one may claim
    the invitations sent to it."""
    from allauth.account.models import EmailAddress

    from projects import services

    services.invitation_create(project=cast.alpha, email="mallory@example.org", role="manager", actor=cast.alice)
    EmailAddress.objects.create(user=cast.mallory, email=cast.mallory.email, verified=verified, primary=True)
    assert login(Client(), "mallory@example.org", PASSWORD).status_code == 302
    joined = cast.mallory.memberships.filter(project=cast.alpha, role="manager").exists()
    assert joined is verified
    status = Invitation.objects.get(email="mallory@example.org").status
    assert status == (Invitation.Status.ACCEPTED if verified else Invitation.Status.PENDING)
