from django.conf import settings
from django.db import models


class Order(models.Model):
    """An order a user owns: what a shop would publish live and decide access to, per object."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    item = models.CharField(max_length=100)
    status = models.CharField(max_length=20, default="new")

    def __str__(self) -> str:
        return f"order {self.pk}: {self.item} ({self.status})"
