"""The benchmark suite (issue 4): the project's server against a plain ``websockets`` baseline.

``python -m bench`` (``make bench``, ``make bench-full``) runs every scenario against both servers in
one invocation and writes a dated Markdown report and a PNG plot to ``bench/results/``. Benchmarks are
not tests: ``tests/test_bench_smoke.py`` only checks that each scenario runs and reports its fields.
"""
