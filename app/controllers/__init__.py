"""Controllers of the Keyless desktop app."""
