"""Chains made by real Cinder 29.0.0 and by bakfs (three levels, a codec per level plus "none"
objects, zeroed regions, an unaligned tail): `restore` equals the source, and random reads of
random sizes equal the source bytes (property test)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bakfs.cinder.metadata import parse_metadata
from bakfs.read.engine import open_engine
from bakfs.read.restore import restore_with
from bakfs.store.s3 import S3Store
from tests.conftest import S3Server
from tests.read.conftest import (
    CINDER_CODECS,
    CINDER_SIZE,
    Chain,
    CountingStore,
    module_config,
    read_backup,
)

CHAINS = ["cinder_chain", "bakfs_chain"]


@pytest.mark.cinder
def test_cinder_chain_is_really_cinders(cinder_chain: Chain, module_bucket: S3Store) -> None:
    """The fixture holds what the format spec says Cinder writes: a codec per level, a parent
    link, and a volume_meta string (bakfs writes the minimal one, Cinder its own)."""
    seen: set[str] = set()
    for ref, codec in zip(cinder_chain.refs, CINDER_CODECS, strict=True):
        metadata = parse_metadata(module_bucket.get(ref.metadata_key))
        codecs = {o.compression for o in metadata.objects}
        assert codec in codecs and codecs <= {codec, "none"}
        seen |= codecs
        assert metadata.volume_meta is not None and "volume-base-metadata" in \
            metadata.volume_meta
    assert seen == {"zlib", "bz2", "zstd", "none"}
    assert parse_metadata(module_bucket.get(cinder_chain.refs[-1].metadata_key)).parent_id \
        == cinder_chain.ids[-2]


@pytest.mark.parametrize("which", CHAINS)
def test_restore_every_level(which: str, request: pytest.FixtureRequest, rgw: S3Server,
                             module_bucket: S3Store, tmp_path: Path) -> None:
    chain: Chain = request.getfixturevalue(which)
    counting = CountingStore(module_bucket)
    config = module_config(rgw, module_bucket.bucket, tmp_path)
    for level in range(len(chain.refs)):
        target = tmp_path / f"{which}-{level}.img"
        result = trio.run(lambda t=target, b=chain.ids[level]: restore_with(  # type: ignore[misc]
            config, b, str(t), store=counting, check=True, sha256=True))
        assert result.sha256 == hashlib.sha256(chain.images[level]).hexdigest()
        assert result.checked  # Cinder's _sha256file agrees with every restored block
        assert target.read_bytes() == chain.images[level]
        assert target.stat().st_size == CINDER_SIZE
    assert max(counting.data_gets().values()) == 1


@pytest.mark.parametrize("which", CHAINS)
def test_random_reads_property(which: str, request: pytest.FixtureRequest, rgw: S3Server,
                               module_bucket: S3Store,
                               tmp_path_factory: pytest.TempPathFactory) -> None:
    chain: Chain = request.getfixturevalue(which)
    work = tmp_path_factory.mktemp(f"prop-{which}")
    # a tiny memory layer and a small disk cache so reads go through every path
    config = module_config(rgw, module_bucket.bucket, work, memory_size=100_000,
                           max_size=400_000)

    reads = st.lists(
        st.tuples(st.integers(0, len(chain.refs) - 1),
                  st.integers(0, CINDER_SIZE + 10),
                  st.one_of(st.integers(0, 10), st.integers(1, 9000),
                            st.integers(1, 3 * 65536 + 7))),
        min_size=1, max_size=25)

    @settings(max_examples=30, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(reads)
    def check(batch: list[tuple[int, int, int]]) -> None:
        async def main() -> None:
            async with open_engine(config, module_bucket) as engine:
                for level, offset, size in batch:
                    got = await read_backup(engine, chain.ids[level], offset, size)
                    assert got == chain.images[level][offset:offset + size]

        trio.run(main)

    check()
