"""Login glue: the OIDC backend (claims -> user and memberships), readable
usernames, and the allauth adapter for local accounts."""
import logging
import re

from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils.http import urlencode
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from clusters import services as cluster_services
from projects import services as project_services

log = logging.getLogger(__name__)

REFUSAL_SESSION_KEY = "nephele_login_refusal"


def generate_username(email, claims=None):
    """A readable, unique username: preferred_username or the e-mail's local
    part, reduced to safe characters, with a number appended on a clash."""
    claims = claims or {}
    base = claims.get("preferred_username") or (email or "user").split("@")[0]
    base = re.sub(r"[^a-zA-Z0-9_.-]+", "", base.lower())[:140] or "user"
    User = get_user_model()
    candidate, n = base, 1
    while User.objects.filter(username=candidate).exists():
        n += 1
        candidate = f"{base}{n}"
    return candidate


def provider_logout_url(request):
    """End the session at the provider too, then come back to the login page."""
    params = {"post_logout_redirect_uri": request.build_absolute_uri("/")}
    id_token = request.session.get("oidc_id_token")
    if id_token:
        params["id_token_hint"] = id_token
    return f"{settings.OIDC_OP_LOGOUT_ENDPOINT}?{urlencode(params)}"


def _claim_true(value):
    return value is True or (isinstance(value, str) and value.lower() == "true")


class OIDCBackend(OIDCAuthenticationBackend):
    """Users are keyed by e-mail, which must be verified by the provider.
    Names, staff flag and claim-given memberships are refreshed on each login."""

    def _refuse(self, reason):
        log.warning("OIDC login refused: %s", reason)
        if getattr(self, "request", None) is not None:
            self.request.session[REFUSAL_SESSION_KEY] = reason
        return False

    def verify_claims(self, claims):
        if not claims.get("email"):
            return self._refuse("Your identity provider did not release an e-mail address.")
        if not _claim_true(claims.get("email_verified")):
            return self._refuse(
                f"Your e-mail address {claims['email']} is not verified by your identity provider. "
                "Verify it there, then sign in again."
            )
        return True

    def filter_users_by_claims(self, claims):
        return self.UserModel.objects.filter(email__iexact=claims["email"])

    @transaction.atomic
    def create_user(self, claims):
        user = self.UserModel(username=generate_username(claims["email"], claims), email=claims["email"])
        user.set_unusable_password()
        self._apply_claims(user, claims)
        return user

    @transaction.atomic
    def update_user(self, user, claims):
        self._apply_claims(user, claims)
        return user

    def _apply_claims(self, user, claims):
        user.first_name = (claims.get("given_name") or "")[:150]
        user.last_name = (claims.get("family_name") or "")[:150]
        if not (user.first_name or user.last_name) and claims.get("name"):
            user.first_name = claims["name"][:150]
        user.email = claims["email"]
        user.oidc_subject = claims.get("sub", "")[:255]
        user.last_claims = claims
        staff_values = set(settings.NEPHELE_STAFF_CLAIM_VALUES)
        if staff_values:
            values = set()
            for claim in settings.NEPHELE_MEMBERSHIP_CLAIMS:
                got = claims.get(claim) or []
                values.update([got] if isinstance(got, str) else got)
            user.is_staff = bool(values & staff_values)
        user.save()
        project_services.memberships_sync_from_claims(
            user=user, grants=project_services.grants_from_claims(claims)
        )
        project_services.invitations_honour_for(user=user)
        cluster_services.posix_accounts_from_claims(user=user, claims=claims)


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request):
        return settings.ACCOUNT_ALLOW_SIGNUP
