"""The xwhep server: REST API over TLS, objects under access rights, the scheduler's home."""
