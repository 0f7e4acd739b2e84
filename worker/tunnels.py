"""A running job's tunnels: publish its listen ports and reach its forward addresses through a relay.

One RelayLink (one SSH connection) per relay serves every job of this worker. Rights come from the
server per job (``POST /hosts/{h}/jobs/{j}/tunnels``) and are granted on the shared link; a relay
restart is healed by the link, which asks the sources below for fresh tickets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from client.api import XWClient
from common.errors import TransportError, XWError
from common.schemas import Assignment, TunnelTicket
from proxy.endpoints import RelayLink, Ticket
from proxy.splice import splice
from worker.execute import JobRun

logger = logging.getLogger(__name__)
BRIDGE_WAIT = 30.0


@dataclass
class JobTunnels:
    """What one job opened: its published names, its forward servers, and the link they use."""

    link: RelayLink
    published: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    servers: list[asyncio.Server] = field(default_factory=list)

    def traffic(self) -> tuple[int, int]:
        """Bytes (into the job, out of the job) through all its tunnels so far."""
        into = out = 0
        for name in self.published:  # a client's bytes come in to the job
            b_in, b_out = self.link.stats(name)
            into, out = into + b_in, out + b_out
        for name in self.allowed:  # the job's bytes go out to the remote service
            b_in, b_out = self.link.stats(name)
            into, out = into + b_out, out + b_in
        return into, out


class Tunnels:
    """The worker's relay links and the tunnels of each job."""

    def __init__(self, client: XWClient, host_uid: str) -> None:
        self.client = client
        self.host_uid = host_uid
        self.links: dict[str, RelayLink] = {}
        self.jobs: dict[str, JobTunnels] = {}

    async def _fresh(self, attempt: str) -> TunnelTicket:
        return await self.client.host_tunnels(self.host_uid, attempt)

    async def _link_ticket(self, relay: str) -> Ticket:
        """A ticket to (re)connect to ``relay``: borrowed from any job of ours that uses it."""
        for job, tunnels in list(self.jobs.items()):
            if self.links.get(relay) is tunnels.link:
                with contextlib.suppress(XWError):
                    t = await self._fresh(job)
                    return Ticket(relay=t.relay, host_key=t.host_key, token=t.ticket)
        raise TransportError(f"no running job needs relay {relay} any more")

    async def open(self, a: Assignment, run: JobRun) -> JobTunnels | None:
        """Publish the job's listen ports and serve its forward ports; None if it declares neither."""
        job = a.job
        if not job.listen_ports and not job.forward_addresses:
            return None
        if not await run.wait_bridges(BRIDGE_WAIT):
            raise TransportError("the job's port bridge did not come up")
        ticket = await self._fresh(a.attempt)
        link = self.links.get(ticket.relay)
        if link is None:
            relay = ticket.relay
            first = Ticket(relay=relay, host_key=ticket.host_key, token=ticket.ticket)
            tickets_left = [first]

            async def source() -> Ticket:
                return tickets_left.pop() if tickets_left else await self._link_ticket(relay)

            link = RelayLink(source, label=f"worker->{relay}")
            await link.start()
            self.links[relay] = link
        tunnels = self.jobs[a.attempt] = JobTunnels(link)

        async def grant() -> str:
            return (await self._fresh(a.attempt)).ticket

        for reason in ticket.refused:
            logger.warning("[job=%s] forward address refused by the server: %s", job.uid[:8], reason)
        for port in job.listen_ports:
            name = f"job-{job.uid}-{port}"

            async def target(port: int = port) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                return await run.open_listen(port)

            await link.publish(name, target, grant)
            tunnels.published.append(name)
        refused = {r.split(":", 1)[0].strip().lower() for r in ticket.refused}
        for fwd in job.forward_addresses:
            address = fwd.address.lower()
            if address in refused:
                continue
            await link.allow(address, grant)
            tunnels.allowed.append(address)

            async def handler(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str = address
            ) -> None:
                try:
                    remote = await link.open(address)
                except XWError as err:
                    logger.warning("[job=%s] cannot reach %s: %s", job.uid[:8], address, err.reason)
                    writer.close()
                    return
                await splice((reader, writer), remote)

            tunnels.servers.append(await run.serve_forward(fwd.port, handler))
        logger.info(
            "[job=%s] tunnels up: publishing %s, reaching %s",
            job.uid[:8],
            tunnels.published or "-",
            tunnels.allowed or "-",
        )
        return tunnels

    async def close(self, job: str) -> None:
        """Take down a finished job's tunnels."""
        tunnels = self.jobs.pop(job, None)
        if tunnels is None:
            return
        for server in tunnels.servers:
            server.close()
        for name in tunnels.allowed:  # its grants fail once the job ends: stop renewing them
            tunnels.link.disallow(name)
        for name in tunnels.published:
            with contextlib.suppress(XWError, OSError):
                await tunnels.link.unpublish(name)
        # Only a running job's tickets can renew a link (relay tickets expire): close a link no job uses.
        if not any(t.link is tunnels.link for t in self.jobs.values()):
            for relay in [r for r, link in self.links.items() if link is tunnels.link]:
                del self.links[relay]
            await tunnels.link.aclose()

    async def aclose(self) -> None:
        for job in list(self.jobs):
            await self.close(job)
        for link in self.links.values():
            await link.aclose()
        self.links.clear()
