"""The volunteer worker (arrives with the worker issue): pulls jobs over TLS and runs them sandboxed."""
