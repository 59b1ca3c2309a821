"""Which keys the orphan sweep may consider: exactly those the ingest path writes for originals."""

from __future__ import annotations

import hashlib

import pytest

from dicomgw.orphans import parse_original_key
from dicomgw.storage import original_key

SHA = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize("partition", ["default", "hospital-a", "originals", "p1"])
def test_keys_of_originals_say_where_they_belong(partition: str) -> None:
    key = original_key("1.2.3", "1.2.3.4", "1.2.3.4.5", SHA, partition)
    parsed = parse_original_key(key)
    assert parsed is not None
    assert (parsed.partition, parsed.study_instance_uid, parsed.series_instance_uid,
            parsed.sop_instance_uid, parsed.sha256) == (partition, "1.2.3", "1.2.3.4", "1.2.3.4.5",
                                                        bytes.fromhex(SHA))


@pytest.mark.parametrize("key", [
    "partitions/research/collection/v1/manifest.csv",  # derived data
    "partitions/research/collection/v1/nifti/1.2.nii.gz",
    f"partitions/default/originals/1/2/3/{SHA}.dcm",  # the default partition has no prefix
    f"partitions/Bad_Name/originals/1/2/3/{SHA}.dcm",
    f"originals/1/2/3/{SHA.upper()}.dcm",
    f"originals/1/2/3/{SHA[:-1]}.dcm",
    f"originals/1/2/3/{SHA}.dcm.part",
    f"originals/1/2/{SHA}.dcm",
    f"originals/1/2/3/4/{SHA}.dcm",
    f"derived/originals/1/2/3/{SHA}.dcm",
    f".tmp/originals/1/2/3/{SHA}.dcm",
    "originals/1/2/3/not-a-digest.dcm",
])
def test_every_other_key_is_left_alone(key: str) -> None:
    assert parse_original_key(key) is None
