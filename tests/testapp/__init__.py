"""A Django app for tests only: a real model (``Order``, owned by a user) to publish and authorize by.

Installed only when ``ECHO_TEST_APP`` is set (``tests/conftest.py`` sets it), never in a deployment.
"""
