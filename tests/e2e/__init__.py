"""End-to-end proof with the real Claude Code client (marked ``e2e``; needs root).

The OTLP receivers in ``receivers.py`` are also the fake collectors of ``tests/test_preflight.py``.
"""
