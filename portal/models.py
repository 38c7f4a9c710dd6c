from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models.functions import Lower


class User(AbstractUser):
    """A person. Keyed by e-mail for OIDC logins; `username` stays readable."""

    email = models.EmailField("e-mail address", blank=True)
    oidc_subject = models.CharField(
        "OIDC subject", max_length=255, blank=True, help_text="`sub` claim of the last OIDC login."
    )
    last_claims = models.JSONField(default=dict, blank=True, help_text="Claims of the last OIDC login.")

    REQUIRED_FIELDS = ["email"]

    class Meta:
        constraints = [
            models.UniqueConstraint(
                Lower("email"), name="user_email_ci_unique", condition=~models.Q(email="")
            )
        ]

    @property
    def display_name(self):
        return self.get_full_name() or self.email or self.username

    def __str__(self):
        return self.display_name
