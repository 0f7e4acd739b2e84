"""Prometheus metrics: instruments (``instruments.py``), database figures (``database.py``), ``/metrics``
(``endpoint.py``). docs/ARCHITECTURE.md ("Metrics") lists the names and says which figure comes from where."""
