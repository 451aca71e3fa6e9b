"""Publishing records, and the API tokens machine clients use."""
from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)


class ApiToken(models.Model):
    """A revocable token for a machine client (science cluster, metadata store …).

    Only the SHA-256 of the token is stored; the token itself is shown once, at creation.
    The client acts as ``user`` and has that user's groups.
    """

    name = models.CharField(max_length=100, help_text="who uses it, e.g. 'blanca-cluster'")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_tokens")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=12, editable=False, help_text="the first characters, to recognise it")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, *, name: str, user) -> tuple["ApiToken", str]:
        """Create a token; return the row and the raw token (never stored)."""
        raw = settings.L2_API_TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(name=name, user=user, key_hash=hash_token(raw), prefix=raw[:10])
        return token, raw

    @classmethod
    def authenticate(cls, raw: str):
        """The token's user, or None for an unknown or revoked token."""
        token = cls.objects.active().select_related("user").filter(key_hash=hash_token(raw)).first()
        if token is None or not token.user.is_active:
            return None
        cls.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
