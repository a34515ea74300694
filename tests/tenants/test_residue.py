"""The residue scanner reads gzip-compressed binary values (usage reports) as text."""

from __future__ import annotations

import gzip

from tenants import residue


def _patterns(*identifiers: str):
    return residue.token_patterns(residue.search_variants(identifiers))


def test_it_finds_a_name_inside_gzip_even_across_decompressed_chunks():
    # The name straddles the boundary between the first and the second chunk searched.
    padding = "x " * ((residue.DECOMPRESSED_CHUNK - 4) // 2)
    blob = gzip.compress(f'{padding}"Gina.E2E" and more'.encode())

    assert residue.gzip_mentions(blob, _patterns("gina.e2e"), overlap=12)
    assert not residue.gzip_mentions(blob, _patterns("gina.e2"), overlap=12)  # a whole token only
    assert not residue.gzip_mentions(blob, _patterns("someone.else"), overlap=16)


def test_it_treats_a_value_that_only_looks_like_gzip_as_holding_nothing():
    assert not residue.gzip_mentions(residue.GZIP_MAGIC + b"not really gzip alice", _patterns("alice"), overlap=8)
