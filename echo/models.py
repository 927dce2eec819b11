"""The app's one table: API keys for programs that publish over HTTP (``echo.access.apikeys``).

Users, groups and permissions are Django's own (``django.contrib.auth``); topics live in Redis.
"""

from __future__ import annotations

from django.db import models


class ApiKey(models.Model):
    """A named secret a program sends as ``Authorization: Bearer <key>`` to publish or get a token.

    Only a SHA-256 digest of the key is stored: the key itself is shown once, when it is made
    (``manage.py api_key create``). Keys are long random strings, so a fast digest is enough (no
    password hashing: nothing to guess). Its two grants are separate: ``publish_topics`` are the
    topics it may publish to, ``read_topics`` those its tokens may read (still narrowed by the topic
    rules, ``echo.access``). Each is comma-separated patterns (``echo.access.patterns``); empty: none.
    """

    name = models.SlugField(max_length=64, unique=True)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    publish_topics = models.CharField(max_length=512, blank=True)
    read_topics = models.CharField(max_length=512, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
