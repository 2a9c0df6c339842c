"""raycseg."""
