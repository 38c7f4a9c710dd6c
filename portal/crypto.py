"""Secrets at rest (SSH keys, cloud credentials): Fernet-encrypted fields.

The key comes from FIELD_ENCRYPTION_KEY (a Fernet key) or, failing that, is
derived from SECRET_KEY, so a database dump alone does not reveal secrets.
"""
import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.db import models

PREFIX = "fernet:"


def _fernet():
    key = getattr(settings, "FIELD_ENCRYPTION_KEY", "") or base64.urlsafe_b64encode(
        hashlib.sha256(("nephele-fields:" + settings.SECRET_KEY).encode()).digest()
    ).decode()
    return Fernet(key.encode() if isinstance(key, str) else key)


def encrypt(text):
    return PREFIX + _fernet().encrypt(text.encode()).decode()


def decrypt(token):
    if not token.startswith(PREFIX):
        return token  # stored before encryption was enabled
    try:
        return _fernet().decrypt(token[len(PREFIX):].encode()).decode()
    except InvalidToken as exc:
        raise ValueError("cannot decrypt a stored secret: was FIELD_ENCRYPTION_KEY or SECRET_KEY changed?") from exc


class EncryptedTextField(models.TextField):
    """A text field stored encrypted; reads give the clear text."""

    def from_db_value(self, value, expression, connection):
        return decrypt(value) if value else value

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        return encrypt(value) if value else value
