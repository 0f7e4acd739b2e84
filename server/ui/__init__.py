"""The web dashboard, served under /ui/ by the same server (server/ui/web.py: plumbing and sessions'
check; pages.py: the pages; queries.py: its reads; sessions.py: sign-in sessions and CSRF)."""

from server.ui.web import install

__all__ = ["install"]
