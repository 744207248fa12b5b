"""Test-suite support code: real servers for the integration tests."""
