"""The encrypted vault, capability grants, the secret broker and the audit log."""
