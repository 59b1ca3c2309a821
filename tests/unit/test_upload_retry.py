"""`dicomgw-client upload` (`dicomgw upload` is the same) sends again the instances a server could not
store for now (0xA700), only those."""

from __future__ import annotations

import argparse
from pathlib import Path

from dicomgw_client.upload import DicomFile, StowResult, Uploader, add_parser


async def test_only_out_of_resources_failures_are_sent_again() -> None:
    files = [DicomFile(Path(f"/f{i}"), 10, "1.2.3", f"1.2.3.{i}") for i in range(4)]
    result = StowResult(referenced=["1.2.3.0"],
                        failed=[("1.2.3.1", 0xA700), ("1.2.3.2", 0xC000), ("1.2.3.3", 0xA700)], warned=0)
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["upload", "/nowhere", "--url", "http://127.0.0.1:9/dicom-web"])
    uploader = Uploader(args)
    try:
        again = uploader._count(files, result, set(), retry=True)
        assert [f.sop_instance_uid for f in again] == ["1.2.3.1", "1.2.3.3"]
        assert uploader.tally.stored == 1 and sum(uploader.tally.failed.values()) == 1

        last = Uploader(args)
        assert last._count(files, result, set(), retry=False) == []  # no attempts left: reported
        assert sum(last.tally.failed.values()) == 3
        await last.client.aclose()
    finally:
        await uploader.client.aclose()
