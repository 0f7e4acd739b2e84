"""Schema-driven fuzzing: schemathesis generates requests from the served OpenAPI document.

The real server (TLS with the grid CA, loopback only) is driven as the administrator, so every route
is reached past authentication. Each operation gets a bounded number of examples, first valid ones
(positive: the document's constraints hold), then invalid ones (negative: a constraint is broken).
Whatever comes back must be no 5xx, a documented status, the documented media type, and a body that
matches the documented schema (problem+json for every 4xx and 5xx); invalid requests must be refused.

Random uids only ever reach "not found", so about half the valid examples point their path uids and
the uids in their bodies at real objects (an app, a data object, a job running on an enrolled host,
a user, a usergroup); the host's routes are then called with the host's own credential.

Examples are derandomized so CI is reproducible; ``XW_SCHEMATHESIS_EXAMPLES=200`` and
``XW_SCHEMATHESIS_RANDOM=1`` explore further by hand. The two streaming upload routes are included
(octet-stream natively, application/zip through a registered byte strategy).
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from common.enums import CPU, OS, AppType, UserRights
from common.schemas import AppIn, HostIn, JobIn, UserGroupIn

API = "/api/v1"
EXAMPLES = int(os.environ.get("XW_SCHEMATHESIS_EXAMPLES", "15"))
RANDOM = os.environ.get("XW_SCHEMATHESIS_RANDOM", "") == "1"
UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

RESPONSE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]
POSITIVE_CHECKS = [*RESPONSE_CHECKS, response_schema_conformance]
# Invalid input: still no 5xx, and refused (4xx) rather than accepted; problem documents conform.
NEGATIVE_CHECKS = [*POSITIVE_CHECKS, negative_data_rejection]

# Results are zips; schemathesis knows octet-stream but not this one: any bytes will do.
schemathesis.openapi.media_type("application/zip", st.binary(max_size=4096))


@dataclass(frozen=True)
class World:
    """Real objects for generated requests to point at, and how to reach the server."""

    base_url: str
    ca: Path
    token: str
    app: str
    data: str
    job: str
    host: str
    host_credential: str | None
    attempt: str  # the job's current attempt on the host
    others: tuple[str, ...]  # a user and a usergroup

    @property
    def uids(self) -> list[str]:
        return [self.app, self.data, self.job, self.host, self.attempt, *self.others]

    def body_refs(self, value: Any, key: str = "") -> Any:
        """A generated body with its uids replaced by real ones: ``app`` an app, ``job`` a job, else data."""
        if isinstance(value, dict):
            return {k: self.body_refs(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.body_refs(v, key) for v in value]
        if isinstance(value, str) and UID.fullmatch(value):
            return {"app": self.app, "job": self.job, "attempt": self.attempt}.get(key, self.data)
        return value

    def headers(self, path: str, params: dict[str, Any]) -> dict[str, str]:
        """The host's credential on its own worker-protocol routes, the administrator's token elsewhere."""
        secret = self.token
        if path.startswith("/hosts/{uid}/") and params.get("uid") == self.host and self.host_credential:
            secret = self.host_credential
        return {"Authorization": f"Bearer {secret}"}


async def _document(grid: Any) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        async with session.get(f"{grid.url}{API}/openapi.json") as resp:
            assert resp.status == 200, await resp.text()
            doc: dict[str, Any] = await resp.json()
    return doc


async def _world(grid: Any, tmp_path: Path) -> World:
    admin = grid.admin
    script = tmp_path / "fuzz.sh"
    script.write_text("#!/bin/sh\necho fuzz\n")
    data = await admin.send_file(script)
    app = await admin.send_app(
        AppIn(name="fuzz_app", type=AppType.SCRIPT, binaries=[{"os": "ANY", "cpu": "ANY", "data": data.uid}])
    )
    job = await admin.submit(JobIn(app=app.uid, inputs=[data.uid], listen_ports=[8080]))
    group = await admin.create_usergroup(UserGroupIn(label="fuzz_group"))
    user = await grid.add_user("fuzz_user", UserRights.STANDARD_USER)
    [user_out] = await admin.users(login="fuzz_user")
    worker = grid.client(grid.admin_cfg)
    enrolment = await worker.enrol(HostIn(name="fuzz_host", os=OS.LINUX, cpu=CPU.AMD64))
    host = enrolment.host.uid
    assignment = await worker.request_work(host, 0)  # the job now runs on the host
    assert assignment is not None
    await user.aclose()
    return World(
        base_url=grid.url + API,
        ca=grid.settings.ca_cert,
        token=(await admin.login("admin", grid.admin_cfg.password)).access_token,
        app=app.uid,
        data=data.uid,
        job=job.uid,
        host=host,
        host_credential=enrolment.credential,
        attempt=assignment.attempt,
        others=(user_out.uid, group.uid),
    )


def _fuzz(doc: dict[str, Any], world: World) -> tuple[Counter[int], list[str]]:
    """Run every operation in both modes (in a thread: the server answers on the test's event loop)."""
    schema = schemathesis.openapi.from_dict(doc)
    http = requests.Session()
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    def run(label: str, strategy: Any, checks: list[Callable[..., Any]], real: bool) -> None:
        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=not RANDOM,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            report_multiple_bugs=False,
        )
        @hypothesis.given(case=strategy, data=st.data())
        def test(case: Any, data: st.DataObject) -> None:
            # only valid cases: a real uid where the document wants one keeps them valid
            if real and data.draw(st.booleans(), label="real objects"):
                for name in case.path_parameters or {}:
                    case.path_parameters[name] = data.draw(st.sampled_from(world.uids), label=name)
                if isinstance(case.body, dict):
                    case.body = world.body_refs(case.body)
            headers = world.headers(case.path, case.path_parameters or {})
            response = case.call(
                base_url=world.base_url, session=http, headers=headers, verify=str(world.ca), timeout=30
            )
            statuses[response.status_code] += 1
            case.validate_response(response, checks=checks, headers=headers)

        try:
            test()
        except hypothesis.errors.Unsatisfiable:
            pass  # invalid input only: an operation without parameters or body has nothing to break
        except Exception as exc:  # one report per operation and mode; the others still run
            failures.append(f"{label}: {exc}"[:3000])

    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        run(f"{label} (valid input)", operation.as_strategy(), POSITIVE_CHECKS, real=True)
        negative = operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE)
        run(f"{label} (invalid input)", negative, NEGATIVE_CHECKS, real=False)
    http.close()
    return statuses, failures


@pytest.mark.timeout(900)
async def test_schemathesis_finds_no_server_error(grid_factory: Any, tmp_path: Path) -> None:
    # A short longpoll: a generated work request for the real host must not hold the run for 30 s.
    grid = await grid_factory(longpoll=0.5)
    doc = await _document(grid)
    world = await _world(grid, tmp_path)
    statuses, failures = await asyncio.to_thread(_fuzz, doc, world)
    operations = sum(len(item) for item in doc["paths"].values())
    sent = sum(statuses.values())
    print(f"schemathesis: {sent} requests over {operations} operations, statuses {sorted(statuses.items())}")
    assert failures == [], "\n\n".join(failures)
    assert sent >= 2 * operations, "schemathesis generated (almost) nothing"
    assert sum(n for status, n in statuses.items() if status < 300) >= operations, "hardly any request got in"
