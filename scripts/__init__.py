"""The project's tools, run from the checkout as ``python -m scripts.<tool>`` (the Makefile does).

``devenv`` (``make run``/``serve``/``test``), ``redis_server`` (the one redis-server launcher),
``redis_topology`` (Sentinel and Cluster built on it), ``chaos`` (``make chaos``) and its checker.
"""
