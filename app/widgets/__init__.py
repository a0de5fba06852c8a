"""Reusable widgets of the Keyless desktop app."""
