"""The relay's ``/metrics`` (Prometheus text format) over plain HTTP: ``xwrelay --metrics-port``.

The relay has no accounts, so the page is for the addresses allowed (``--metrics-allow``, default
loopback) and refused (403 problem+json) to every other one; it listens on 127.0.0.1 unless told
otherwise. The figures are the relay's own plain counters (``Relay.counts``, fed by proxy/splice.py and
the connection hooks), read when scraped: nothing on the tunnels' path touches prometheus-client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from common.errors import Forbidden
from common.netallow import LOOPBACK, Network, allowed, parse_allow
from proxy.relay import Relay

logger = logging.getLogger(__name__)

PATH = "/metrics"
PREFIX = "xwhep_relay_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROBLEM_TYPE = "application/problem+json"


class RelayCollector(Collector):
    """The relay's counters as Prometheus families (read at each scrape)."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def collect(self) -> Iterator[Metric]:
        counts = self._relay.counts
        tunnel_bytes = CounterMetricFamily(
            PREFIX + "tunnel_bytes",
            "Bytes through tunnels; in: from connectors to publishers, out: back.",
            labels=["direction"],
        )
        tunnel_bytes.add_metric(["in"], counts.traffic.bytes_in)
        tunnel_bytes.add_metric(["out"], counts.traffic.bytes_out)
        yield tunnel_bytes
        yield CounterMetricFamily(PREFIX + "tunnels", "Tunnels opened.", value=counts.tunnels)
        yield GaugeMetricFamily(PREFIX + "tunnels_open", "Tunnels open now.", value=counts.tunnels_open)
        yield CounterMetricFamily(
            PREFIX + "connections", "SSH connections accepted.", value=counts.connections
        )
        yield GaugeMetricFamily(
            PREFIX + "connections_open", "SSH connections open now.", value=self._relay.connections()
        )
        yield CounterMetricFamily(
            PREFIX + "auth_refusals", "Tickets refused at authentication.", value=counts.auth_refusals
        )
        yield GaugeMetricFamily(
            PREFIX + "names_published", "Names published now.", value=len(self._relay.names())
        )


def metrics_app(relay: Relay, allow: Iterable[Network]) -> web.Application:
    """An aiohttp app serving ``GET /metrics`` for the allowed addresses."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(relay))
    networks = tuple(allow)

    async def metrics(request: web.Request) -> web.Response:
        if not allowed(request.remote, networks):
            return _forbidden(f"{request.remote} may not read the relay's {PATH} (see --metrics-allow)")
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get(PATH, metrics)
    return app


def _forbidden(reason: str) -> web.Response:
    err = Forbidden(reason)
    return web.Response(text=json.dumps(err.problem()), status=err.status, content_type=PROBLEM_TYPE)


class MetricsServer:
    """The relay's metrics listener (an async context manager; ``port`` once started)."""

    def __init__(self, relay: Relay, allow: Iterable[str] = LOOPBACK) -> None:
        self._runner = web.AppRunner(metrics_app(relay, parse_allow(allow)), access_log=None)
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port); the bound port."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        sockets = getattr(site._server, "sockets", None)
        assert sockets, "metrics site did not bind"
        self.port = int(sockets[0].getsockname()[1])
        logger.info("[relay] metrics on http://%s:%s%s", host, self.port, PATH)
        return self.port

    async def aclose(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> MetricsServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
