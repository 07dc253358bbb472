"""Pytest fixtures around the fake Whop server (filled in with the Whop client work)."""
