"""Tests for raycseg.reports and `cseg report`."""
