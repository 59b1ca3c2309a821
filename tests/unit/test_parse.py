"""Header-only parse: UIDs, decoded character sets, DICOM JSON, and frame/bulk byte ranges."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import generate_frames

from dicomgw.dicom.parse import BULK_BASE, parse_instance
from dicomgw.errors import CannotUnderstand
from tests.dicomdata import make_instance, pydicom_files

CHARSETS = Path(pydicom.data.__file__).parent / "charset_files"


@pytest.mark.parametrize(
    ("name", "alphabetic", "ideographic", "folded"),
    [
        ("chrKoreanMulti.dcm", "김희중", None, "김희중"),
        ("chrFren.dcm", "Buc^Jérôme", None, "buc^jérôme"),
        ("chrGerm.dcm", "Äneas^Rüdiger", None, "äneas^rüdiger"),
        ("chrX1.dcm", "Wang^XiaoDong", "王^小東", "wang^xiaodong=王^小東"),
        ("chrH31.dcm", "Yamada^Tarou", "山田^太郎", "yamada^tarou=山田^太郎=やまだ^たろう"),
    ],
)
def test_names_are_decoded_from_their_character_set(
    name: str, alphabetic: str, ideographic: str | None, folded: str
) -> None:
    parsed = parse_instance(CHARSETS / name)
    pn = json.loads(parsed.metadata_json)["00100010"]["Value"][0]
    assert pn["Alphabetic"] == alphabetic
    if ideographic:
        assert pn["Ideographic"] == ideographic
    assert parsed.study["patient_name_folded"] == folded
    assert "00100010" in parsed.study_json and "00080005" in parsed.study_json


def test_fuzzy_words_hold_every_name_component() -> None:
    parsed = parse_instance(CHARSETS / "chrX1.dcm")
    assert parsed.study["patient_name_words"] == " wang xiaodong 王 小東 "


def test_native_frames_are_the_pixel_bytes(tmp_path: Path) -> None:
    path = tmp_path / "mf.dcm"
    data = make_instance(rows=16, columns=8, frames=5)
    path.write_bytes(data)
    parsed = parse_instance(path)
    ds = pydicom.dcmread(path)
    frame_size = 16 * 8 * 2
    frames = parsed.layout["frames"]
    assert len(frames) == 5
    for i, [[offset, length]] in enumerate(frames):
        assert data[offset : offset + length] == ds.PixelData[i * frame_size : (i + 1) * frame_size]
    meta = json.loads(parsed.metadata_json)
    assert meta["7FE00010"]["BulkDataURI"].startswith(BULK_BASE + "/studies/")
    assert "Value" not in meta["7FE00010"] and "InlineBinary" not in meta["7FE00010"]


def test_encapsulated_frames_are_the_fragments() -> None:
    checked = 0
    for path in pydicom_files():
        ds = pydicom.dcmread(path)
        if not ds.file_meta.TransferSyntaxUID.is_encapsulated or "PixelData" not in ds:
            continue
        parsed = parse_instance(path)
        frames = parsed.layout["frames"]
        if frames is None:
            continue
        data = path.read_bytes()
        n = int(ds.get("NumberOfFrames", 1) or 1)
        expected = list(generate_frames(ds.PixelData, number_of_frames=n))
        got = [b"".join(data[o : o + ln] for o, ln in frame) for frame in frames]
        assert [g.rstrip(b"\0") for g in got] == [e.rstrip(b"\0") for e in expected], path.name
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"not dicom" * 50, "DICM"),
        (lambda b: b[:300], "unreadable|missing|truncat"),  # cut before its UIDs
    ],
)
def test_unreadable_input_is_cannot_understand(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.dcm"
    path.write_bytes(mutate(make_instance()))
    with pytest.raises(CannotUnderstand, match=message):
        parse_instance(path)


def test_an_identified_instance_cut_short_is_parsed_as_damaged(tmp_path: Path) -> None:
    path = tmp_path / "cut.dcm"
    path.write_bytes(make_instance()[:-4000])
    parsed = parse_instance(path)
    assert "truncated" in parsed.layout["damaged"]
    assert parsed.layout["frames"] is None
    assert json.loads(parsed.metadata_json)["00080018"]["Value"] == [parsed.sop_instance_uid]


def test_every_corpus_file_parses_to_valid_json() -> None:
    for path in pydicom_files():
        parsed = parse_instance(path)
        meta = json.loads(parsed.metadata_json)
        assert meta["00080018"]["Value"][0] == parsed.sop_instance_uid
        json.loads("{" + parsed.study_json + "}")
        json.loads("{" + parsed.series_json + "}")
