import itertools

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from bakfs.cinder.chain import extents_in, overlay
from bakfs.cinder.metadata import BackupMetadata, ObjectEntry
from bakfs.errors import BadMetadata


def _layer(backup_id: str, parent: str | None, spans: list[tuple[int, int]]) -> BackupMetadata:
    objects = tuple(ObjectEntry(f"{backup_id}-{i:05d}", off, length, "none", "0" * 32)
                    for i, (off, length) in enumerate(spans, start=1))
    return BackupMetadata(backup_id, "v", "", parent, objects)


def _materialise(extents: list, layers: list[BackupMetadata]) -> list[str | None]:  # type: ignore[type-arg]
    """Which object serves each byte, according to the extents."""
    out: list[str | None] = []
    for e in extents:
        out += [None if e.entry is None else f"{e.entry.name}@{e.object_offset + i}"
                for i in range(e.length)]
    return out


def _naive(layers: list[BackupMetadata], size: int) -> list[str | None]:
    cells: list[str | None] = [None] * size
    for layer in layers:
        for o in layer.objects:
            for i in range(o.length):
                cells[o.offset + i] = f"{o.name}@{i}"
    return cells


def test_newer_layers_win_including_their_zero_objects() -> None:
    layers = [_layer("full", None, [(0, 64), (64, 36)]),
              _layer("inc1", "full", [(32, 32)]),
              _layer("inc2", "inc1", [(40, 8), (96, 4)])]
    extents = overlay(layers)
    assert _materialise(extents, layers) == _naive(layers, 100)
    assert [(e.offset, e.length, e.backup_id) for e in extents] == [
        (0, 32, "full"), (32, 8, "inc1"), (40, 8, "inc2"), (48, 16, "inc1"), (64, 32, "full"),
        (96, 4, "inc2")]


def test_gaps_in_a_full_backup_become_holes() -> None:
    extents = overlay([_layer("full", None, [(0, 10), (20, 10)])])
    assert [(e.offset, e.length, e.entry is None) for e in extents] == [
        (0, 10, False), (10, 10, True), (20, 10, False)]


def test_extents_in_clips_to_the_asked_range() -> None:
    extents = overlay([_layer("full", None, [(0, 64), (64, 36)])])
    got = extents_in(extents, 60, 10)
    assert [(e.offset, e.length, e.object_offset) for e in got] == [(60, 4, 60), (64, 6, 0)]


def test_broken_chains_are_refused() -> None:
    with pytest.raises(BadMetadata, match="parent is missing"):
        overlay([_layer("inc", "full", [(0, 10)])])
    with pytest.raises(BadMetadata, match="has parent"):
        overlay([_layer("full", None, [(0, 10)]), _layer("inc", "other", [(0, 10)])])
    with pytest.raises(BadMetadata, match="past the volume size"):
        overlay([_layer("full", None, [(0, 10)]), _layer("inc", "full", [(5, 10)])])


@st.composite
def chains(draw: st.DrawFn) -> tuple[list[BackupMetadata], int]:
    size = draw(st.integers(1, 200))
    cuts = sorted(set(draw(st.lists(st.integers(1, size - 1), max_size=6)) if size > 1 else []))
    bounds = [0, *cuts, size]
    layers = [_layer("l0", None, [(a, b - a) for a, b in itertools.pairwise(bounds)])]
    for n in range(1, draw(st.integers(1, 5))):
        spans = []
        position = 0
        while position < size:
            position += draw(st.integers(0, 30))
            length = draw(st.integers(1, 40))
            if position >= size:
                break
            length = min(length, size - position)
            spans.append((position, length))
            position += length
        layers.append(_layer(f"l{n}", f"l{n - 1}", spans))
    return layers, size


@settings(max_examples=300, deadline=None)
@given(chains())
def test_overlay_matches_a_byte_by_byte_overlay(chain: tuple[list[BackupMetadata], int]) -> None:
    layers, size = chain
    assert _materialise(overlay(layers), layers) == _naive(layers, size)
