"""What the tests share: starting processes, WebSocket clients, accounts, keys, the browser, nginx...

Fixtures live in ``tests/conftest.py``; these modules hold plain functions and classes, imported by
the test modules (which never import each other). The Redis servers themselves are started by
``scripts.redis_server``, the launcher development and the bench use too.
"""
