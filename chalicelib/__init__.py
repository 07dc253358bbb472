"""Rebound: failed-payment recovery for Whop creators."""
