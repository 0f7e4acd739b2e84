"""The xwhep client: an async API library and the XWHEP-compatible xw* commands."""
