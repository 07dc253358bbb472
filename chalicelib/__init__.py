"""Rebound: failed-payment recovery for Whop creators."""

import os

# Rebound uses no pydantic plugins, and looking for them (at the first model class) reads the
# metadata of every installed distribution: ~30 ms of each cold start. An explicit setting wins.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
