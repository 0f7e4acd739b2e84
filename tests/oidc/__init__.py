"""A real OpenID Connect provider for tests (provider.py) and a scripted browser (browser.py)."""
