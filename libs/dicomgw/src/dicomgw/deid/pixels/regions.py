"""Per-device region rules: where a manufacturer's model writes text into images of a given size.

The rules are data (``regions.json`` beside this module, versioned): a privacy officer adds a device
without touching code, and every cleaned image records the version it was cleaned with. A rule's boxes
are redacted whether or not OCR sees text there; its frames, when given, are blanked whole.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pydicom.dataset import Dataset

from dicomgw.deid.pixels.ocr import Box


@dataclass(frozen=True)
class RegionRule:
    manufacturer: str  # case-insensitive prefix of Manufacturer
    model: str         # ManufacturerModelName, case-insensitive; "*" for any model
    rows: int
    columns: int
    boxes: tuple[Box, ...] = ()
    frames: str | tuple[int, ...] = ()  # "all" or 0-based frame indices blanked whole
    note: str = ""

    def matches(self, manufacturer: str, model: str, rows: int, columns: int) -> bool:
        return (rows == self.rows and columns == self.columns
                and _norm(manufacturer).startswith(_norm(self.manufacturer))
                and (self.model == "*" or _norm(model) == _norm(self.model)))


@dataclass(frozen=True)
class RegionRules:
    version: str
    rules: tuple[RegionRule, ...]

    def for_image(self, manufacturer: str, model: str, rows: int, columns: int) -> list[RegionRule]:
        return [rule for rule in self.rules if rule.matches(manufacturer, model, rows, columns)]


@dataclass(frozen=True)
class Device:
    """What a rule is matched by; read from the original (de-identification may remove it)."""
    manufacturer: str = ""
    model: str = ""

    @classmethod
    def of(cls, ds: Dataset) -> Device:
        return cls(str(ds.get("Manufacturer", "") or ""), str(ds.get("ManufacturerModelName", "") or ""))


def _norm(value: str) -> str:
    return " ".join(value.lower().split())


def _rule(item: dict[str, Any]) -> RegionRule:
    frames = item.get("frames", ())
    boxes = tuple(_box(b) for b in item.get("boxes", ()))
    return RegionRule(str(item["manufacturer"]), str(item.get("model", "*")), int(item["rows"]),
                      int(item["columns"]), boxes,
                      "all" if frames == "all" else tuple(int(f) for f in frames), str(item.get("note", "")))


def _box(value: Any) -> Box:
    row0, col0, row1, col1 = (int(v) for v in value)
    if not (0 <= row0 < row1 and 0 <= col0 < col1):
        raise ValueError(f"region box {value} is empty or negative")
    return row0, col0, row1, col1


def parse(document: dict[str, Any]) -> RegionRules:
    return RegionRules(str(document["version"]), tuple(_rule(item) for item in document["rules"]))


def load(text: str) -> RegionRules:
    """Rules from a JSON document of the form of ``regions.json``."""
    return parse(json.loads(text))


@functools.cache
def shipped() -> RegionRules:
    """The rules that ship with dicomgw (``regions.json``)."""
    return load(resources.files("dicomgw.deid.pixels").joinpath("regions.json").read_text("utf-8"))
