"""Section ``identity``: how long a node's agent takes from a new CSR to the new certificate,
key and trust bundle in place (the ``current`` symlink swapped), for a service identity it
renews.

Real processes on loopback: a PKI from ``control.certs`` (the ``meshctl certs`` CA), a
control server with mTLS and ``--signing-ca`` on a ``file:`` store holding service
``bench-identity`` (``security: {hosts: [bench-node]}``) and ``--cert-lifetime`` short enough
that the agent renews about once a second, and agent ``bench-node`` (its node certificate)
holding that identity with ``--identity``. Each renewal is the whole path: a fresh EC P-256
key and CSR, ``NodeService/SignCertificate`` over mTLS (a new channel each time, as the agent
makes it: TCP connect and TLS handshake included; the control server checks the node's
certificate, reads the service from its store, matches its hosts and signs), the checks of
what came back (the chain verified against the bundle), and the files written, fsynced and
swapped in.

The agent times each step with ``perf_counter`` and logs it with the renewal (``identity
certificate written``: ``csr_to_files_ms``, ``key_ms``, ``sign_ms``, ``write_ms``); the
section reads those lines from the agent's log. Alongside, the bench process watches the
``current`` link and counts the versions it saw, as a check that renewals really swapped the
files (``versions_seen`` should be close to ``renewals``).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from pathlib import Path

from bench import Options, Row, percentile, section
from bench._procs import BenchError, Processes
from mesh_core import tls
from mesh_core.identity_files import identity_paths

SERVICE = "bench-identity"
NODE = "bench-node"
LIFETIME = "2s"  # renewed at half: about one renewal a second
START_TIMEOUT = 60.0
TABLE = "CSR to files in place (one identity renewed by a real agent, ms)"


def _samples(quick: bool) -> int:
    return 5 if quick else 60


def _start(procs: Processes, name: str, module: str, *args: str) -> list[str]:
    """Starts a server taking ``--ready-file``; returns every address it wrote."""
    ready = procs.workdir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    proc = procs.python(name, module, *args, "--ready-file", str(ready))
    deadline = time.monotonic() + START_TIMEOUT
    while not (ready.exists() and (text := ready.read_text().strip())):
        if not proc.alive:
            raise BenchError(f"{name} exited with {proc.popen.returncode}:\n{proc.errors()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{name} not ready after {START_TIMEOUT}s:\n{proc.errors()}")
        time.sleep(0.02)
    return text.split()


def _renewals(log: Path) -> list[dict[str, float]]:
    """The agent's ``identity certificate written`` lines, oldest first."""
    entries = []
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("event") == "identity certificate written":
            entries.append(entry)
    return entries


def _stats(name: str, values: list[float], what: str) -> Row:
    return {
        "table": TABLE,
        "step": name,
        "p50_ms": round(statistics.median(values), 3),
        "p90_ms": round(percentile(values, 90), 3),
        "p99_ms": round(percentile(values, 99), 3),
        "min_ms": round(min(values), 3),
        "max_ms": round(max(values), 3),
        "what": what,
    }


def _collect(procs: Processes, workdir: Path, samples: int) -> tuple[list[dict[str, float]], int]:
    """Waits for ``samples`` renewals after the first certificate (which comes with the
    agent's start-up); returns their log entries and how many versions the watcher saw."""
    paths = identity_paths(SERVICE, workdir / f"{NODE}-state" / "identities")
    log = workdir / f"{NODE}.err"
    seen: set[str] = set()
    deadline = time.monotonic() + 60 + samples
    while True:
        with contextlib.suppress(OSError):
            seen.add(os.readlink(paths.current))
        entries = _renewals(log)
        if len(entries) > samples:
            return entries[1 : samples + 1], len(seen)
        if time.monotonic() > deadline:
            errors = "\n".join(p.errors() for p in procs.procs)
            raise BenchError(f"{len(entries)} renewals of {samples + 1} in time:\n{errors}")
        time.sleep(0.005)


@section("identity")
def run(options: Options) -> list[Row]:
    from control import certs

    workdir = options.workdir
    pki = workdir / "pki"
    certs.init_ca(pki / "ca", "bench.mesh")
    certs.issue(pki / "ca", pki / "control", server="127.0.0.1")
    certs.issue(pki / "ca", pki / NODE, node=NODE, ips=["127.0.0.1"])
    store = workdir / "identity-store"
    store.mkdir()
    (store / f"{SERVICE}.yaml").write_text(
        f"name: {SERVICE}\nendpoints: []\nsecurity: {{hosts: [{NODE}]}}\n"
    )
    samples = _samples(options.quick)
    started = time.monotonic()
    with Processes(workdir) as procs:
        control = _start(
            procs,
            "identity-control",
            "control",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            f"file:{store}",
            "--signing-ca",
            str(pki / "ca"),
            "--cert-lifetime",
            LIFETIME,
            *tls.flags(pki / "control"),
        )[0]
        _start(
            procs,
            NODE,
            "mesh_agent",
            "run",
            "--control",
            control,
            "--node-id",
            NODE,
            "--socket",
            str(workdir / f"{NODE}.sock"),
            "--state-dir",
            str(workdir / f"{NODE}-state"),
            "--identity",
            SERVICE,
            "--log-level",
            "info",
            *tls.flags(pki / NODE),
        )
        entries, versions = _collect(procs, workdir, samples)
    rows = [
        _stats(
            "total",
            [e["csr_to_files_ms"] for e in entries],
            "key and CSR made to the current link swapped",
        ),
        _stats("key_and_csr", [e["key_ms"] for e in entries], "EC P-256 key and the CSR"),
        _stats(
            "sign",
            [e["sign_ms"] for e in entries],
            "SignCertificate over mTLS, new channel (connect, handshake, the server's checks)",
        ),
        _stats(
            "write",
            [e["write_ms"] for e in entries],
            "checks (the chain verified against the bundle), a version directory written and "
            "fsynced, the link swapped",
        ),
    ]
    total = rows[0]
    rows.append(
        {
            "table": "summary",
            "renewals": len(entries),
            "versions_seen": versions,
            "csr_to_files_p50_ms": total["p50_ms"],
            "csr_to_files_p99_ms": total["p99_ms"],
            "sign_p50_ms": rows[2]["p50_ms"],
            "write_p50_ms": rows[3]["p50_ms"],
            "cert_lifetime": LIFETIME,
            "seconds": round(time.monotonic() - started, 1),
        }
    )
    return rows
