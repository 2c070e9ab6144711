"""Test doubles for external services (real HTTP servers on loopback)."""
