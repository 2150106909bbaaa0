"""Development helpers shared by tests/ and bench/ (never imported by the gateway itself)."""
