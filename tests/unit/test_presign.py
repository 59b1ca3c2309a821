"""The archive's own SigV4 presigner (dicomgw.storage.presign) gives botocore's URL, character for
character, for the same instant: endpoints with and without a port or a path, keys that need encoding.
(MinIO accepting these URLs is tested by the collection tests, which read objects with them.)"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.config import Config
from botocore.session import get_session

from dicomgw.storage.presign import Presigner

ACCESS, SECRET = "AKIAEXAMPLE/+key", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def botocore_url(endpoint: str, region: str, bucket: str, key: str, expires: int) -> str:
    client = get_session().create_client(
        "s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))
    url: str = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                             ExpiresIn=expires)
    return url


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9000", "https://s3.example.org",
                                      "https://store.example.org:8443/minio", "http://[::1]:9000"])
@pytest.mark.parametrize("key", [
    "objects/1.2.840.10008/abc.dcm",
    "studies/1.2.3/series 4/ä+b=c&d~e_f-g.h!'()*@,;:$.dcm",
])
def test_the_url_is_botocore_s(endpoint: str, key: str) -> None:
    theirs = botocore_url(endpoint, "eu-central-1", "dicom-bucket", key, 900)
    # signed at the instant botocore signed at
    stamp = parse_qs(urlsplit(theirs).query)["X-Amz-Date"][0]
    now = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    ours = Presigner(endpoint, "eu-central-1", ACCESS, SECRET).url("dicom-bucket", key, 900, now=now)
    assert ours == theirs


def test_the_signing_key_is_kept_for_the_day_only() -> None:
    signer = Presigner("http://127.0.0.1:9000", "us-east-1", ACCESS, SECRET)
    one = signer.url("b", "k", 60, now=datetime(2026, 12, 7, 23, 59, 59, tzinfo=UTC))
    two = signer.url("b", "k", 60, now=datetime(2026, 12, 8, 0, 0, 1, tzinfo=UTC))
    assert "20261207%2Fus-east-1" in one and "20261208%2Fus-east-1" in two
    assert list(signer._keys) == ["20261208"]
    assert signer.url("b", "k", 60, now=datetime(2026, 12, 7, 23, 59, 59, tzinfo=UTC)) == one


def test_an_endpoint_must_be_http() -> None:
    with pytest.raises(ValueError):
        Presigner("ftp://store", "us-east-1", ACCESS, SECRET)
