"""Views of the Keyless desktop app."""
