"""Dialogs of the Keyless desktop app."""
