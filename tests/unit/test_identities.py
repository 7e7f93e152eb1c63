"""The agent's service identities: the files of a version and the swap of ``current``
(:mod:`mesh_agent.daemon.identities.files`), and the keeper's renewals, retries and sources
(:mod:`mesh_agent.daemon.identities.keeper`) with a signer that signs in process with a real
:class:`control.signing.SigningAuthority`, or refuses."""

from __future__ import annotations

import asyncio
import datetime
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control import certs
from control.signing import SigningAuthority, SigningFiles
from mesh.v1 import node_pb2
from mesh_agent.daemon.identities import files
from mesh_agent.daemon.identities.keeper import (
    CONFIGURED,
    REGISTRATION,
    IdentityKeeper,
)
from mesh_agent.daemon.identities.keys import chain_facts, key_matches, new_key_and_csr
from mesh_core.backoff import Backoff
from mesh_core.errors import PermissionDeniedError, UnavailableError
from mesh_core.identity_files import identity_paths
from tests.conftest import eventually

pytestmark = pytest.mark.timeout(60)

TD = "mesh.test"
FAST = Backoff(base=0.02, cap=0.05)


class InProcessSigner:
    """Signs with ``authority``; refuses with ``refusal`` while it is set; counts calls."""

    def __init__(self, authority: SigningAuthority) -> None:
        self.authority = authority
        self.refusal: Exception | None = None
        self.bundle: str | None = None  # sent instead of the authority's, when set
        self.calls = 0

    async def sign(self, csr_pem: str) -> node_pb2.SignCertificateResponse:
        self.calls += 1
        if self.refusal is not None:
            raise self.refusal
        signed = self.authority.sign(*self.authority.requested(csr_pem))
        response = node_pb2.SignCertificateResponse(
            spiffe_id=signed.spiffe_id,
            certificate_chain=signed.chain_pem,
            trust_bundle=self.bundle or signed.bundle_pem,
        )
        response.not_after.FromDatetime(signed.certificate.not_valid_after_utc)
        return response


@pytest.fixture
def authority(tmp_path: Path) -> SigningAuthority:
    certs.init_ca(tmp_path / "ca", TD)
    return SigningAuthority(SigningFiles.ca_dir(tmp_path / "ca"), TD)


@pytest.fixture
def signer(authority: SigningAuthority) -> InProcessSigner:
    return InProcessSigner(authority)


@pytest.fixture
async def keeper(tmp_path: Path, signer: InProcessSigner) -> AsyncIterator[IdentityKeeper]:
    keeper = IdentityKeeper(tmp_path / "identities", TD, signer, backoff=FAST, grace=0.0)
    task = asyncio.create_task(keeper.run())
    try:
        yield keeper
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _material(authority: SigningAuthority, service: str = "web") -> files.Material:
    request = new_key_and_csr(f"spiffe://{TD}/service/{service}")
    signed = authority.sign(*authority.requested(request.csr_pem))
    return files.Material(signed.chain_pem.encode(), request.key_pem, signed.bundle_pem.encode())


# -- files -----------------------------------------------------------------------------------


def test_a_version_is_written_whole_and_made_current(
    tmp_path: Path, authority: SigningAuthority
) -> None:
    paths = identity_paths("web", tmp_path)
    material = _material(authority)
    version = files.write_version(paths, material)
    assert os.readlink(paths.current) == version.name
    assert paths.cert.read_bytes() == material.chain
    assert paths.key.read_bytes() == material.key
    assert paths.ca.read_bytes() == material.bundle
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.cert.stat().st_mode) == 0o644
    assert files.read_current(paths) == material
    assert paths.read().cert == material.chain  # mesh_core's reader, through the link
    assert [p.name for p in paths.directory.iterdir() if p.name.startswith(".")] == []


def test_each_version_is_whole_seconds_newer_and_old_ones_go_after_the_grace(
    tmp_path: Path, authority: SigningAuthority
) -> None:
    paths = identity_paths("web", tmp_path)
    first = files.write_version(paths, _material(authority))
    second = files.write_version(paths, _material(authority))
    third = files.write_version(paths, _material(authority))
    stamps = [int((v / "cert.pem").stat().st_mtime) for v in (first, second, third)]
    assert stamps[0] < stamps[1] < stamps[2], stamps  # grpcio compares time_t
    for version in (first, second, third):
        keys = {int((version / n).stat().st_mtime) for n in ("cert.pem", "key.pem", "ca.pem")}
        assert len(keys) == 1
    assert files.prune(paths, grace=3600) == 0
    assert files.prune(paths, grace=0) == 2
    assert sorted(p.name for p in paths.directory.iterdir()) == sorted(["current", third.name])
    assert files.current_version(paths) == third


def test_leftovers_of_an_interrupted_write_are_cleared(tmp_path: Path) -> None:
    paths = identity_paths("web", tmp_path)
    leftover = paths.directory / ".tmp-v20250101T000000.000000Z-abcdef"
    leftover.mkdir(parents=True)
    (leftover / "key.pem").write_text("half")
    assert files.prune(paths, grace=0) == 1
    assert not leftover.exists()


# -- the keeper ------------------------------------------------------------------------------


async def test_a_wanted_identity_gets_files_and_is_renewed_at_half_life(
    tmp_path: Path, authority: SigningAuthority, keeper: IdentityKeeper
) -> None:
    authority.lifetime = datetime.timedelta(seconds=1)
    keeper.want(REGISTRATION, ["web"])
    paths = identity_paths("web", tmp_path / "identities")

    def renewed(times: int) -> bool:
        held = keeper.held()
        return bool(held) and held[0].renewals >= times

    await eventually(lambda: renewed(1), 10, "the first certificate")
    held = keeper.held()[0]
    assert held.spiffe_id == f"spiffe://{TD}/service/web" and held.last_error == ""
    assert held.sources == {REGISTRATION}
    first = files.current_version(paths)
    assert held.not_after is not None and held.renew_at is not None
    assert held.renew_at < held.not_after
    assert held.timing is not None and held.timing.total > 0
    await eventually(lambda: renewed(3), 10, "two renewals")
    assert files.current_version(paths) != first
    material = files.read_current(paths)
    assert material is not None and key_matches(material.chain, material.key)
    facts = chain_facts(material.chain)
    assert facts.uris == (f"spiffe://{TD}/service/web",)


async def test_a_refusal_is_shown_retried_and_keeps_the_files_in_place(
    tmp_path: Path, signer: InProcessSigner, keeper: IdentityKeeper
) -> None:
    keeper.want(CONFIGURED, ["web"])
    await eventually(lambda: keeper.held() and keeper.held()[0].renewals == 1, 10, "a certificate")
    held = keeper.held()[0]
    paths = identity_paths("web", tmp_path / "identities")
    before = files.read_current(paths)
    signer.refusal = PermissionDeniedError("node 'n1' may not hold it")
    held.next_attempt = 0.0  # due now
    held.kick.set()
    calls = signer.calls
    await eventually(lambda: held.last_error and signer.calls >= calls + 3, 10, "retries")
    assert "may not hold it" in held.last_error
    assert files.read_current(paths) == before
    signer.refusal = None
    await eventually(lambda: held.renewals == 2 and not held.last_error, 10, "a recovery")


async def test_retry_now_skips_the_backoff(tmp_path: Path, signer: InProcessSigner) -> None:
    keeper = IdentityKeeper(tmp_path, TD, signer, backoff=Backoff(base=3600, cap=3600))
    signer.refusal = UnavailableError("no control server signed")
    task = asyncio.create_task(keeper.run())
    try:
        keeper.want(CONFIGURED, ["web"])
        await eventually(lambda: keeper.held() and keeper.held()[0].last_error, 10, "an error")
        signer.refusal = None
        keeper.retry_now()
        await eventually(lambda: keeper.held()[0].renewals == 1, 10, "the retry")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_sources_add_up_and_an_unwanted_identity_keeps_its_files(
    tmp_path: Path, keeper: IdentityKeeper
) -> None:
    keeper.want(REGISTRATION, ["web", "db"])
    keeper.want(CONFIGURED, ["web"])
    await eventually(lambda: len(keeper.held()) == 2, 10, "two identities")
    assert {h.service: h.sources for h in keeper.held()} == {
        "db": {REGISTRATION},
        "web": {REGISTRATION, CONFIGURED},
    }
    await eventually(lambda: all(h.renewals for h in keeper.held()), 10, "both certificates")
    keeper.want(REGISTRATION, ["web"])
    await eventually(lambda: [h.service for h in keeper.held()] == ["web"], 10, "db dropped")
    assert identity_paths("db", tmp_path / "identities").cert.exists()


async def test_a_valid_certificate_on_disk_is_taken_over(
    tmp_path: Path, authority: SigningAuthority, signer: InProcessSigner
) -> None:
    paths = identity_paths("web", tmp_path)
    files.write_version(paths, _material(authority))
    keeper = IdentityKeeper(tmp_path, TD, signer, backoff=FAST)
    task = asyncio.create_task(keeper.run())
    try:
        keeper.want(CONFIGURED, ["web"])
        await eventually(lambda: keeper.held() and keeper.held()[0].not_after, 10, "loaded")
        held = keeper.held()[0]
        assert held.renew_at is not None
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=11)
        assert held.renew_at > later  # at the half-life of the one on disk
        assert held.next_attempt == held.renew_at.timestamp()
        assert signer.calls == 0 and held.renewals == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_without_a_trust_domain_every_attempt_says_why(
    tmp_path: Path, signer: InProcessSigner
) -> None:
    keeper = IdentityKeeper(tmp_path, None, signer, backoff=FAST)
    task = asyncio.create_task(keeper.run())
    try:
        keeper.want(CONFIGURED, ["web"])
        await eventually(lambda: keeper.held() and keeper.held()[0].last_error, 10, "an error")
        assert "no node certificate" in keeper.held()[0].last_error
        assert signer.calls == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_certificate_that_does_not_verify_with_its_bundle_is_not_put_in_place(
    tmp_path: Path, signer: InProcessSigner, keeper: IdentityKeeper
) -> None:
    certs.init_ca(tmp_path / "other", TD)
    signer.bundle = (tmp_path / "other" / "ca.pem").read_text()
    keeper.want(CONFIGURED, ["web"])
    await eventually(lambda: keeper.held() and keeper.held()[0].last_error, 10, "an error")
    assert "does not verify with its trust bundle" in keeper.held()[0].last_error
    assert not identity_paths("web", tmp_path / "identities").current.exists()
