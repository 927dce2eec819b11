"""Static files storage for production: hashed names, compressed copies, and hashed module imports."""

from __future__ import annotations

from whitenoise.storage import CompressedManifestStaticFilesStorage


class HashedModulesStorage(CompressedManifestStaticFilesStorage):
    """WhiteNoise's hashed and compressed storage, also rewriting ES-module ``import`` paths.

    The page's scripts are ES modules that import each other (``app.js`` imports ``./connection.js``).
    Without this, those imports keep the unhashed names, so after a deploy a browser could run a new
    ``app.js`` against an old ``connection.js`` from its cache. With it, each import names the exact
    version it was built with, and every file can be cached for good.
    """

    support_js_module_import_aggregation = True
