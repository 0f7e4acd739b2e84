"""Render a results file (the latest record of each benchmark) as docs/BENCHMARKS.md.

``python -m bench.report [--results FILE] [--out FILE]``; ``make bench`` calls it through bench.run.
The analysis under the table (profile findings and the plan) is kept by hand in bench/analysis.md.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

from bench.harness import DOC, RESULTS, ROOT, load_results, machine_line

ORDER = [
    "dispatch",
    "latency",
    "scale",
    "submit",
    "relay",
    "data",
    "connections",
    "processes",
    "metrics",
    "validation",
]
ANALYSIS = ROOT / "bench" / "analysis.md"
OTHERS = "other processes' cores"


def num(value: float | None, digits: int = 3) -> str:
    """A number with about ``digits`` significant digits, thousands separated."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    v = float(value)
    if v == 0:
        return "0"
    if v == int(v) and abs(v) >= 1:
        return f"{int(v):,}"
    if abs(v) >= 10 ** (digits - 1):
        return f"{v:,.0f}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:,.{decimals}f}"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_head(*cols: str) -> list[str]:
    return [md_row(*cols), md_row(*["---"] * len(cols))]


def value_cell(row: dict[str, Any]) -> str:
    if row.get("value") is None:
        return cell(row.get("note") or "not measured")
    text = f"**{num(row['value'])}** {row['unit']}"
    spread = row.get("spread")
    if spread and spread.get("runs", 0) > 1:
        text += f" (median of {spread['runs']}; range {num(spread['low'])} to {num(spread['high'])})"
    if row.get("note"):
        text += f"; {row['note']}"
    return cell(text)


def baseline_cell(row: dict[str, Any]) -> str:
    if row.get("baseline") is None:
        return "—"
    return cell(f"{num(row['baseline'])} {row.get('baseline_unit', '')} ({row.get('baseline_label', '')})")


def ratio_cell(row: dict[str, Any]) -> str:
    if row.get("ratio") is None:
        return "—"
    return cell(f"{num(row['ratio'])} ({row.get('ratio_label', '')})")


def anchor_cell(row: dict[str, Any]) -> str:
    parts = [row["anchor"]] if row.get("anchor") else []
    if row.get("goal"):
        verdict = {True: "met", False: "**not met**", None: "not judged"}[row.get("met")]
        parts.append(f"goal {row['goal']}: {verdict}")
    return cell("; ".join(parts)) or "—"


def table(records: list[dict[str, Any]]) -> list[str]:
    out = md_head(
        "figure",
        "value",
        "baseline measured in the same run",
        "ratio",
        "anchor / goal",
        "date",
        "machine",
        "command",
    )
    for rec in records:
        machine = machine_line(rec.get("machine", {}))
        command = f"`{rec.get('command', '')}`"
        if rec.get("benchmark") in ("dispatch", "submit", "processes"):
            command += " (under `scripts/pg-test-server --` for PostgreSQL)"
        for row in rec.get("rows", []):
            out.append(
                "| "
                + " | ".join(
                    [
                        cell(row["figure"]),
                        value_cell(row),
                        baseline_cell(row),
                        ratio_cell(row),
                        anchor_cell(row),
                        rec.get("date", ""),
                        cell(machine),
                        command,
                    ]
                )
                + " |"
            )
    return out


# --- details per benchmark ---------------------------------------------------------------------------------


def _dispatch(d: dict[str, Any]) -> list[str]:
    out = md_head(
        "database", "run", "jobs/s", "server ms CPU/job", "server cores", "load generator cores", OTHERS
    )
    for db in ("SQLite", "PostgreSQL"):
        for i, r in enumerate(d.get(db, {}).get("runs", []), 1):
            out.append(
                md_row(
                    db,
                    i,
                    num(r["jobs_per_s"]),
                    num(r["server_cpu_ms_per_job"]),
                    num(r["server_cpu_busy"]),
                    num(r["client_cpu_busy"]),
                    num(r.get("others_cpu_busy")),
                )
            )
    out += [
        "",
        *md_head("database", "ping req/s", "server ms CPU/ping", "server cores", "machine cores busy"),
    ]
    for db in ("SQLite", "PostgreSQL"):
        for p in d.get(db, {}).get("ping", []):
            out.append(
                md_row(
                    db,
                    num(p["req_per_s"]),
                    num(p["server_cpu_ms_per_req"]),
                    num(p["server_cpu_busy"]),
                    num(p.get("machine_cpu_busy")),
                )
            )
    out += ["", *md_head("database", "request", "req/s", "server ms CPU/request")]
    for db in ("SQLite", "PostgreSQL"):
        for name, e in d.get(db, {}).get("endpoints", {}).items():
            out.append(md_row(db, cell(name), num(e["req_per_s"]), num(e["server_cpu_ms_per_req"])))
        runs = d.get(db, {}).get("runs", [])
        if runs:
            cpu = sorted(r["server_cpu_ms_per_job"] for r in runs)[len(runs) // 2]
            out.append(md_row(db, "one job: claim + result upload (dispatch runs above)", "—", num(cpu)))
    return out


def _latency(d: dict[str, Any]) -> list[str]:
    out = ["| interval | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    for key, label in (
        ("running", "submit -> RUNNING (server: started - created)"),
        ("completed", "submit -> COMPLETED (server: completed - created)"),
        ("seen_completed", "submit -> COMPLETED seen by the client (10 ms polling)"),
    ):
        s = d.get(key) or {}
        out.append(
            f"| {label} | {num(s.get('p50_ms'))} | {num(s.get('p90_ms'))} | {num(s.get('p99_ms'))} | "
            f"{num(s.get('max_ms'))} |"
        )
    return out


def _scale(d: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for mode, res in d.items():
        if not isinstance(res, dict) or "levels" not in res:
            continue
        out += [
            f"*{mode}* (heartbeat every {num(res['period_s'])} s; {res.get('stopped', '')})",
            "",
            *md_head(
                "workers",
                "heartbeats",
                "p50 ms",
                "p99 ms",
                "server cores",
                "server RSS MiB",
                "load generator cores",
                OTHERS,
                "errors",
            ),
        ]
        for lv in res["levels"]:
            out.append(
                md_row(
                    f"{lv['workers']:,}",
                    f"{lv['heartbeats']:,}",
                    num(lv["p50_ms"]),
                    num(lv["p99_ms"]),
                    num(lv["server_cpu_busy"]),
                    num(lv["server_rss_mib"]),
                    num(lv["client_cpu_busy"]),
                    num(lv.get("others_cpu_busy")),
                    lv["errors"],
                )
            )
        out.append("")
    return out


def _submit(d: dict[str, Any]) -> list[str]:
    out = md_head(
        "database",
        "xwsubmit run",
        "seconds",
        "jobs/s",
        "server ms CPU/job",
        "server cores",
        "command CPU s",
        OTHERS,
    )
    for db in ("SQLite", "PostgreSQL"):
        for i, r in enumerate(d.get(db, {}).get("runs", []), 1):
            out.append(
                md_row(
                    db,
                    f"{i} (jobs before it: {(i - 1) * r['jobs']:,})",
                    num(r["seconds"]),
                    num(r["jobs_per_s"]),
                    num(r["server_cpu_ms_per_job"]),
                    num(r["server_cpu_busy"]),
                    num(r["command_cpu_s"]),
                    num(r["others_cpu_busy"]),
                )
            )
    old = d.get("SQLite", {}).get("one_per_request", {})
    lst = d.get("SQLite", {}).get("list", {})
    return [
        *out,
        "",
        f"* One POST /jobs per job ({d.get('in_flight_baseline')} in flight), SQLite: {old.get('jobs', 0):,} "
        f"jobs in {num(old.get('seconds'))} s, server {num(old.get('server_cpu_ms_per_job'))} ms CPU/job.",
        f"* List: {lst.get('pages')} pages; first page {num(lst.get('first_page_ms'))} ms, median "
        f"{num(lst.get('median_page_ms'))} ms, last page {num(lst.get('last_page_ms'))} ms "
        "(offset pagination).",
    ]


def _relay(d: dict[str, Any]) -> list[str]:
    out = md_head(
        "path",
        "MiB/s (runs)",
        "new connection p50 / p99 ms",
        "CPU ms/MiB: relay or sshd",
        "all tunnel processes",
    )
    for key, label in (("raw", "raw loopback TCP"), ("relay", "xwhep relay"), ("ssh", "OpenSSH ssh -L")):
        r = d.get(key)
        if not r:
            continue
        runs = ", ".join(num(x) for x in r.get("mib_per_s_runs", []))
        out.append(
            md_row(
                label,
                f"{num(r['mib_per_s'])} ({runs})",
                f"{num(r['connect']['p50_ms'])} / {num(r['connect']['p99_ms'])}",
                num(r["main_cpu_ms_per_mib"]),
                num(r["tunnel_cpu_ms_per_mib"]),
            )
        )
    if d.get("ssh_skipped"):
        out.append(f"\nOpenSSH not measured: {d['ssh_skipped']}")
    return out


def _data(d: dict[str, Any]) -> list[str]:
    out = [
        "| run | upload MiB/s | download MiB/s | server VmHWM after upload / download MiB |",
        "|---|---|---|---|",
    ]
    for i, r in enumerate(d.get("xw", []), 1):
        out.append(
            f"| xwhep {i} | {num(r['upload_mib_s'])} | {num(r['download_mib_s'])} | "
            f"{num(r['server_hwm_after_upload_mib'])} / {num(r['server_hwm_after_download_mib'])} |"
        )
    tls = d.get("tls", {})
    for i, (u, dn) in enumerate(
        zip(tls.get("upload_mib_s", []), tls.get("download_mib_s", []), strict=False), 1
    ):
        out.append(f"| plain TLS {i} | {num(u)} | {num(dn)} | — |")
    return out


def _connections(d: dict[str, Any]) -> list[str]:
    sizes = d.get("sizes", {})
    out = [
        f"Flood: {sizes.get('idle', 0):,} idle TCP connections and {sizes.get('trickle', 0):,} TLS "
        f"connections trickling a header byte every {num(sizes.get('interval'))} s, from "
        f"{sizes.get('attackers')} attacker processes that reopen what the server closes; pings "
        "alternate between a new connection per request and a keep-alive connection.",
        "",
        *md_head(
            "listener",
            "ping p50 / p99 ms, new connection (failed)",
            "ping p50 / p99 ms, keep-alive (failed)",
            "same without the flood: p99 new / keep-alive",
            "server VmHWM MiB",
            "descriptors at peak",
            "connections open (flood side)",
            "reopened per s",
            "cores: server / flood / machine",
            "log lines (tracebacks)",
        ),
    ]
    for mode in ("gated", "plain"):
        r = d.get(mode)
        if not r:
            continue
        new, kept = r["flood"]["new"], r["flood"]["keepalive"]
        label = {"gated": "gated (new)", "plain": "plain (aiohttp TCPSite, before)"}[mode]
        if r.get("stopped_early"):
            label += f"; stopped early: {r['stopped_early']}"
        out.append(
            md_row(
                cell(label),
                f"{num(new['p50_ms'])} / {num(new['p99_ms'])} ({new['failed']})",
                f"{num(kept['p50_ms'])} / {num(kept['p99_ms'])} ({kept['failed']})",
                f"{num(r['quiet']['new']['p99_ms'])} / {num(r['quiet']['keepalive']['p99_ms'])}",
                num(r["hwm_mib"]),
                f"{r['peak_fds']:,}",
                f"{r['flood_open_at_start']:,} -> {r['flood_open_at_end']:,}",
                num(r["reopened_per_s"]),
                f"{num(r['server_cpu_busy'])} / {num(r.get('flood_cpu_busy'))} / "
                f"{num(r.get('machine_cpu_busy'))}",
                f"{r['log']['lines']:,} ({r['log']['tracebacks']:,})",
            )
        )
    return out


def _processes(d: dict[str, Any]) -> list[str]:
    out = md_head(
        "server processes",
        "jobs/s",
        "ms CPU/job: servers / PostgreSQL / load generator",
        "cores: servers / PostgreSQL / load generator",
        OTHERS,
    )
    for r in d.get("runs", []):
        out.append(
            md_row(
                r["processes"],
                num(r["jobs_per_s"]),
                f"{num(r['server_cpu_ms_per_job'])} / {num(r.get('postgres_cpu_ms_per_job'))} / "
                f"{num(r.get('client_cpu_ms_per_job'))}",
                f"{num(r['server_cpu_busy'])} / {num(r.get('postgres_cpu_busy'))} / "
                f"{num(r['client_cpu_busy'])}",
                num(r.get("others_cpu_busy")),
            )
        )
    out += ["", "| wake-up | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    for key, label in (("across", "submit on A -> RUNNING on B"), ("same", "submit on B -> RUNNING on B")):
        for what, how in (("running", "server: started - created"), ("claimed", "client: submit -> claimed")):
            s = (d.get(key) or {}).get(what) or {}
            out.append(
                f"| {label} ({how}) | {num(s.get('p50_ms'))} | {num(s.get('p90_ms'))} | "
                f"{num(s.get('p99_ms'))} | {num(s.get('max_ms'))} |"
            )
    return out


def _metrics(d: dict[str, Any]) -> list[str]:
    out = md_head(
        "round",
        "order",
        "scraped jobs/s",
        "not scraped jobs/s",
        "ratio",
        "scrapes",
        "ms CPU/job: scraped / not",
        OTHERS,
    )
    for i, e in enumerate(d.get("rounds", []), 1):
        s, p = e["scraped"], e["plain"]
        out.append(
            md_row(
                i,
                "scraped first" if i % 2 else "not scraped first",
                num(s["jobs_per_s"]),
                num(p["jobs_per_s"]),
                num(s["jobs_per_s"] / p["jobs_per_s"], 4),
                s.get("scrapes", "—"),
                f"{num(s['server_cpu_ms_per_job'])} / {num(p['server_cpu_ms_per_job'])}",
                f"{num(s.get('others_cpu_busy'))} / {num(p.get('others_cpu_busy'))}",
            )
        )
    return out


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _kinds(trust: dict[str, Any], kind: str) -> str:
    """'trusted / quarantined of hosts' for one kind of host."""
    t = trust.get(kind) or {}
    return f"{t.get('trusted', 0)} / {t.get('quarantined', 0)} of {t.get('hosts', 0)}"


def _validation(d: dict[str, Any]) -> list[str]:
    sizes = d.get("sizes", {})
    out = [
        f"{sizes.get('workers')} simulated workers ({sizes.get('liars')} liars; each its own user and "
        f"host) x {sizes.get('slots')} slots; SQLite. Hosts: trusted / quarantined for the application.",
        "",
        "*(a) independent liars, adaptive policy*",
        "",
        *md_head(
            "phase",
            "jobs",
            "COMPLETED / ERROR",
            "wrong accepted",
            "attempts/job",
            "accepted on trust",
            "liars' share of attempts",
            "verdicts",
            "honest hosts",
            "liars",
            "server ms CPU/job",
            "seconds",
        ),
    ]
    a = d.get("independent", {})
    for key, label, trust in (
        ("warmup", "warm-up", a.get("trust_after_warmup", {})),
        ("measured", "measured", a.get("trust_at_end", {})),
    ):
        p = a.get(key)
        if not p:
            continue
        verdicts = ", ".join(f"{k} {v:,}" for k, v in sorted(p.get("verdicts", {}).items()))
        out.append(
            md_row(
                label,
                f"{p['jobs']:,}",
                f"{p['completed']:,} / {p['error']:,}",
                p["wrong_accepted"],
                num(p["attempts_per_job"]),
                f"{p['accepted_on_trust']:,}",
                _pct(p.get("liar_share_of_attempts")),
                cell(verdicts),
                _kinds(trust, "honest"),
                _kinds(trust, "independent liar"),
                num(p.get("costs", {}).get("server_cpu_ms_per_job")),
                num(p.get("costs", {}).get("elapsed_s")),
            )
        )
    out += [
        "",
        "*(b) colluding liars (their wrong results agree)*",
        "",
        *md_head(
            "policy",
            "jobs",
            "COMPLETED / ERROR",
            "wrong accepted",
            "rate",
            "theory f = 0.2",
            "colluders' share of attempts (theory there)",
            "attempts/job",
            "wrong on trust / by agreement",
            "colluders trusted / quarantined",
            "honest hosts trusted / quarantined",
            "by thirds of the jobs: colluders' share of attempts -> wrong accepted",
            "server ms CPU/job",
        ),
    ]
    for label, b in d.get("colluding", {}).items():
        out.append(
            md_row(
                label,
                f"{b['jobs']:,}",
                f"{b['completed']:,} / {b['error']:,}",
                b["wrong_accepted"],
                _pct(b.get("wrong_rate")),
                _pct(b.get("theory_rate")),
                f"{_pct(b.get('liar_share_of_attempts'))} ({_pct(b.get('theory_rate_at_observed_share'))})",
                num(b["attempts_per_job"]),
                f"{b['wrong_accepted_on_trust']} / {b['wrong_by_agreement']}",
                _kinds(b.get("trust", {}), "colluding liar"),
                _kinds(b.get("trust", {}), "honest"),
                ", ".join(
                    f"{_pct(t.get('liar_share_of_attempts'))} -> {_pct(t.get('wrong_rate'))}"
                    for t in b.get("thirds", [])
                ),
                num(b.get("costs", {}).get("server_cpu_ms_per_job")),
            )
        )
    c = d.get("cpu", {})
    out += [
        "",
        f"*(c) server CPU per job, honest fleet, {c.get('jobs_per_run', 0):,} jobs per run*",
        "",
        *md_head(
            "round",
            "order",
            "no validation ms CPU/job",
            "quorum 2 ms CPU/job",
            "quorum 2 ms CPU/attempt",
            "quorum 2 attempts/job",
            "ratio",
            OTHERS,
        ),
    ]
    for i, e in enumerate(c.get("rounds", []), 1):
        p, q = e["plain"], e["quorum2"]
        out.append(
            md_row(
                i,
                " then ".join(e.get("order", [])),
                num(p["server_cpu_ms_per_accepted_job"]),
                num(q["server_cpu_ms_per_accepted_job"]),
                num(q["server_cpu_ms_per_attempt"]),
                num(q["attempts_per_job"]),
                num(q["server_cpu_ms_per_accepted_job"] / p["server_cpu_ms_per_accepted_job"]),
                f"{num(p.get('others_cpu_busy'))} / {num(q.get('others_cpu_busy'))}",
            )
        )
    errors = d.get("server_errors") or {}
    if errors.get("total"):
        out += [
            "",
            f"**The server answered {errors['total']:,} of the simulated workers' requests with an error** "
            "(they retried, as xwworker does):",
            "",
            *(f"* {n:,} x {cell(why)}" for why, n in errors.get("by_request", {}).items()),
        ]
    out += ["", *(f"* {note}" for note in d.get("notes", []))]
    return out


DETAILS = {
    "validation": _validation,
    "metrics": _metrics,
    "dispatch": _dispatch,
    "latency": _latency,
    "scale": _scale,
    "submit": _submit,
    "relay": _relay,
    "data": _data,
    "connections": _connections,
    "processes": _processes,
}


_ENTRY = re.compile(r"^(run|main|<module>) \((server|proxy|worker)/(cli|__main__)\.py:\d+\)$")


def _frame_label(fn: str) -> str:
    """A deepest-frame-of-ours that is the process entry point means: no handler of ours on the stack."""
    return f"event loop, no handler of ours (`{fn}`)" if _ENTRY.match(fn) else f"`{fn}`"


def profile_lines(name: str, prof: dict[str, Any]) -> list[str]:
    if "error" in prof:
        return [f"* {name}: no profile ({prof['error']})"]
    out = [f"* **{name}** ({prof.get('samples', 0)} busy samples at 100 Hz):"]
    deepest = "; ".join(f"{pct}% {_frame_label(fn)}" for fn, pct in prof.get("ours_deepest", [])[:6])
    leaves = "; ".join(f"{pct}% `{fn}`" for fn, pct in prof.get("self", [])[:6])
    out.append(f"  * deepest line of ours on the stack: {deepest}")
    out.append(f"  * leaf frames (self time): {leaves}")
    return out


def render(results: dict[str, Any], *, quick: bool) -> str:
    records = [results[k] for k in ORDER if k in results] + [v for k, v in results.items() if k not in ORDER]
    machines = {machine_line(r.get("machine", {})) for r in records}
    dates = sorted(r.get("date", "") for r in records)
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `make bench` (python -m bench.run) from bench/results/latest.json;",
        "     do not edit by hand: the analysis below the table comes from bench/analysis.md. -->",
        "",
        "Benchmarks are not tests: they have no pass/fail thresholds. Every figure below was measured by one",
        "command (last column) in one `make bench` run; baselines in the third column were measured in the",
        "same run on the same machine. Throughput figures are medians of repeated runs with their range.",
        "",
        f"Run {'(quick sizes) ' if quick else ''}between {dates[0] if dates else '?'} and "
        f"{dates[-1] if dates else '?'} on: {'; '.join(sorted(machines))}.",
        "",
        "**The machine is shared and noisy**: other engineers run test suites on the same 2 cores while",
        "these benchmarks run. The detail tables give, per run, the cores used by *other* processes",
        "meanwhile; CPU time per operation (ms CPU/job, ms CPU/MiB) is far less sensitive to that noise",
        "than rates and latencies, so read those first when comparing runs. Load generators (simulated",
        "workers, clients) run on the same 2 cores as the server.",
        "",
        *table(records),
        "",
        "How to run (from the repository root): `make bench` runs everything (~20 min) under a throwaway",
        "PostgreSQL (`scripts/pg-test-server`), stores the records in bench/results/latest.json and rewrites",
        "this file; `make bench-quick` runs every benchmark with tiny sizes in about two minutes (part",
        "of CI: it fails if a benchmark crashes) and writes its report to a temporary directory. One",
        "benchmark: `.venv/bin/python -m bench.NAME [--quick] [--no-profile] [--keep]` with NAME one of",
        "dispatch, latency, scale, submit, relay, data, connections, processes, metrics, validation.",
        "Profiles need py-spy in the virtualenv (`.venv/bin/pip install py-spy`); the OpenSSH baseline needs",
        "`openssh-server`. Both are skipped, with the reason in the report, when missing.",
        "",
        "## Goals",
        "",
    ]
    for rec in records:
        for row in rec.get("rows", []):
            if row.get("goal"):
                verdict = {True: "met", False: "not met", None: "not judged"}[row.get("met")]
                value = (
                    num(row.get("value")) + " " + row.get("unit", "") if row.get("value") is not None else "—"
                )
                lines.append(f"* {row['goal']} — {row['figure']}: {value} — **{verdict}**")
    lines += ["", "## Details", ""]
    for rec in records:
        lines += [f"### {rec.get('title', rec.get('benchmark'))}", "", f"`{rec.get('command', '')}`", ""]
        if rec.get("details", {}).get("crashed"):
            lines += [f"Crashed: {rec['details']['crashed']}", ""]
            continue
        render_details = DETAILS.get(rec.get("benchmark", ""))
        if render_details:
            lines += [*render_details(rec.get("details", {})), ""]
    lines += ["## Profiles (py-spy, server process unless named)", ""]
    any_profile = False
    for rec in records:
        for name, prof in rec.get("profiles", {}).items():
            any_profile = True
            lines += profile_lines(f"{rec.get('benchmark')}: {name}", prof)
    if not any_profile:
        lines.append("No profiles in this run (quick mode does not profile).")
    lines.append("")
    not_measured = [
        f"* {row['figure']}: {row.get('note', '')}"
        for rec in records
        for row in rec.get("rows", [])
        if row.get("value") is None
    ]
    if not_measured:
        lines += ["## Not measured", "", *not_measured, ""]
    if ANALYSIS.exists():
        lines += [ANALYSIS.read_text().rstrip(), ""]
    return "\n".join(lines)


def write(results_path: Path, out: Path, *, quick: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(load_results(results_path), quick=quick))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--quick", action="store_true", help="say the figures come from quick sizes")
    ns = parser.parse_args()
    write(ns.results, ns.out, quick=ns.quick)
    print(f"wrote {ns.out}")


if __name__ == "__main__":
    main()
