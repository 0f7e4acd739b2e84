"""The relay proxy and tunnel endpoints (arrives with the relay issue)."""
