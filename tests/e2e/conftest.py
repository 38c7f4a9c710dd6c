"""Fixtures for the end-to-end tier: the test bed's real OIDC provider."""
import json
import os
import re
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests
from django.conf import settings


@pytest.fixture
def idp_accounts():
    """The provider's account file (read fresh by the provider on each
    login). Tests may edit it; the original is restored afterwards."""
    path = Path(os.environ["OIDC_TEST_ACCOUNTS_FILE"])
    original = path.read_text()

    class Accounts:
        def read(self):
            return json.loads(path.read_text())

        def update(self, login, **claims):
            data = self.read()
            data[login]["claims"].update(claims)
            path.write_text(json.dumps(data, indent=2))

    yield Accounts()
    path.write_text(original)


@pytest.fixture(autouse=True)
def _oidc_configured():
    assert settings.OIDC_ENABLED, "the test bed's OIDC settings are missing: run via `make test`"


def oidc_login(base_url, login, password, session=None):
    """Drive the authorization-code flow as a browser would: start at the
    portal, fill in the provider's form, follow redirects back. Returns
    (session, final response)."""
    s = session or requests.Session()
    form = s.get(urljoin(base_url, "/oidc/authenticate/"), timeout=10)
    assert form.status_code == 200, form.text[:500]
    action = re.search(r'<form[^>]*action="([^"]+)"', form.text).group(1)
    response = s.post(urljoin(form.url, action.replace("&amp;", "&")),
                      data={"login": login, "password": password}, timeout=10)
    return s, response
