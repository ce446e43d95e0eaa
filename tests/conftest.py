"""Shared fixtures. Area-specific fixtures live in their own modules, registered here."""

pytest_plugins = ["tests.pki_fixtures", "tests.quant_fixtures"]
