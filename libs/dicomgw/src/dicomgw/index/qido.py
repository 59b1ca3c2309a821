"""QIDO-RS query building: PS3.4 C.2.2.2 matching of query parameters, all of it done in SQL.

``parse_query`` turns the request's parameters into a ``Query`` (or raises BadRequest); ``search`` runs
it at study, series or instance level and returns DICOM JSON objects. Computed attributes
(ModalitiesInStudy, NumberOfStudyRelated*, ...) are aggregated for the page of results in one grouped
query each, never per row.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, Select, and_, distinct, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from dicomgw.dicom.names import fold, person_name_words
from dicomgw.dicom.parse import valid_uid
from dicomgw.errors import BadRequest
from dicomgw.index.models import Instance, Series, Study

Level = Literal["study", "series", "instance"]
Kind = Literal["uid", "str", "pn", "date", "time", "int", "computed"]
LEVELS: tuple[Level, ...] = ("study", "series", "instance")


@dataclass(frozen=True)
class Attr:
    keyword: str
    level: Level
    kind: Kind
    column: Any = None
    folded: Any = None  # PN: case-folded column
    words: Any = None  # PN: component-words column (fuzzy matching)

    @property
    def tag(self) -> str:
        return f"{int(tag_for_keyword(self.keyword)):08X}"  # type: ignore[arg-type]

    @property
    def vr(self) -> str:
        return str(dictionary_VR(self.tag))


_ATTRS = [
    Attr("StudyInstanceUID", "study", "uid", Study.study_instance_uid),
    Attr("StudyDate", "study", "date", Study.study_date),
    Attr("StudyTime", "study", "time", Study.study_time),
    Attr("AccessionNumber", "study", "str", Study.accession_number),
    Attr("StudyID", "study", "str", Study.study_id),
    Attr("StudyDescription", "study", "str", Study.study_description),
    Attr("PatientID", "study", "str", Study.patient_id),
    Attr("PatientBirthDate", "study", "date", Study.patient_birth_date),
    Attr("PatientSex", "study", "str", Study.patient_sex),
    Attr("PatientName", "study", "pn", Study.patient_name, Study.patient_name_folded,
         Study.patient_name_words),
    Attr("ReferringPhysicianName", "study", "pn", Study.referring_physician_name,
         Study.referring_physician_name_folded),
    Attr("ModalitiesInStudy", "study", "computed", Series.modality),
    Attr("SOPClassesInStudy", "study", "computed", Instance.sop_class_uid),
    Attr("NumberOfStudyRelatedSeries", "study", "computed"),
    Attr("NumberOfStudyRelatedInstances", "study", "computed"),
    Attr("SeriesInstanceUID", "series", "uid", Series.series_instance_uid),
    Attr("Modality", "series", "str", Series.modality),
    Attr("SeriesNumber", "series", "int", Series.series_number),
    Attr("SeriesDescription", "series", "str", Series.series_description),
    Attr("SeriesDate", "series", "date", Series.series_date),
    Attr("SeriesTime", "series", "time", Series.series_time),
    Attr("BodyPartExamined", "series", "str", Series.body_part_examined),
    Attr("PerformedProcedureStepStartDate", "series", "date",
         Series.performed_procedure_step_start_date),
    Attr("PerformedProcedureStepStartTime", "series", "time",
         Series.performed_procedure_step_start_time),
    Attr("NumberOfSeriesRelatedInstances", "series", "computed"),
    Attr("SOPInstanceUID", "instance", "uid", Instance.sop_instance_uid),
    Attr("SOPClassUID", "instance", "uid", Instance.sop_class_uid),
    Attr("InstanceNumber", "instance", "int", Instance.instance_number),
    Attr("Rows", "instance", "int", Instance.rows),
    Attr("Columns", "instance", "int", Instance.columns),
    Attr("NumberOfFrames", "instance", "int", Instance.number_of_frames),
    Attr("ContentDate", "instance", "date", Instance.content_date),
    Attr("ContentTime", "instance", "time", Instance.content_time),
]
ATTRS: dict[str, Attr] = {a.tag: a for a in _ATTRS}

# PS3.18 Tables 10.6.3-3/4/5: returned whatever includefield says
DEFAULTS: dict[Level, list[str]] = {
    "study": ["SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber",
              "InstanceAvailability", "ModalitiesInStudy", "ReferringPhysicianName",
              "TimezoneOffsetFromUTC", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
              "StudyInstanceUID", "StudyID", "StudyDescription", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances"],
    "series": ["SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC", "SeriesDescription",
               "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber",
               "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
               "PerformedProcedureStepStartTime", "RequestAttributesSequence"],
    "instance": ["SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
                 "TimezoneOffsetFromUTC", "StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber",
                 "Rows", "Columns", "BitsAllocated", "NumberOfFrames"],
}
RETRIEVE_URL = "00081190"
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


def tag_of(key: str) -> str | None:
    """'PatientName' or '00100010' (any case) -> '00100010'; None if it names no attribute."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return key.upper()
    tag = tag_for_keyword(key)
    return f"{int(tag):08X}" if tag is not None else None


@dataclass
class Query:
    level: Level
    filters: list[tuple[Attr, str]] = field(default_factory=list)
    include_all: bool = False
    include: set[str] = field(default_factory=set)
    fuzzy: bool = False
    limit: int = 1000
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def _int_param(name: str, value: str) -> int:
    if not value.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(value)


def parse_query(level: Level, params: Sequence[tuple[str, str]], *, default_limit: int,
                max_limit: int) -> Query:
    """Validate and classify the query parameters of a QIDO-RS request."""
    query = Query(level=level, limit=default_limit)
    allowed_levels = LEVELS[: LEVELS.index(level) + 1]
    for key, value in params:
        if key == "limit":
            query.limit = min(_int_param(key, value), max_limit)
        elif key == "offset":
            query.offset = _int_param(key, value)
        elif key == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise BadRequest("fuzzymatching must be true or false")
            query.fuzzy = value.lower() == "true"
        elif key == "includefield":
            for item in filter(None, (v.strip() for v in value.split(","))):
                if item == "all":
                    query.include_all = True
                    continue
                tag = tag_of(item)
                if tag is None:
                    raise BadRequest(f"includefield names no attribute: {item}")
                query.include.add(tag)
        else:
            _add_filter(query, key, value, allowed_levels)
    return query


def _add_filter(query: Query, key: str, value: str, allowed: Sequence[Level]) -> None:
    tag = tag_of(key)
    if tag is None:
        if "." in key:
            query.warnings.append(f"sequence matching is not supported: {key}")
            return
        raise BadRequest(f"unknown query key: {key}")
    attr = ATTRS.get(tag)
    if attr is None or attr.level not in allowed or (attr.kind == "computed" and attr.column is None):
        query.warnings.append(f"{keyword_for_tag(int(tag, 16)) or tag} is not a supported "
                              f"matching key at {query.level} level and was ignored")
        # still return it, as PS3.18 asks for attributes used as keys
        query.include.add(tag)
        return
    if value == "":
        query.include.add(tag)  # universal matching: return the attribute
        return
    _validate(attr, value)
    query.filters.append((attr, value))
    query.include.add(tag)


def _validate(attr: Attr, value: str) -> None:
    if attr.kind == "uid":
        for uid in value.split("\\"):
            if not valid_uid(uid.strip()):
                raise BadRequest(f"{attr.keyword} has a malformed UID")
    elif attr.kind in ("date", "time"):
        pattern = _DATE if attr.kind == "date" else _TIME
        lo, sep, hi = value.partition("-")
        if not sep:
            lo = hi = value
        if (lo and not pattern.match(lo)) or (hi and not pattern.match(hi)) or not (lo or hi):
            raise BadRequest(f"{attr.keyword} must be a {attr.kind} or a {attr.kind} range")
    elif attr.kind == "int":
        if not re.fullmatch(r"-?\d+", value.strip()):
            raise BadRequest(f"{attr.keyword} must be an integer")


def _like(value: str) -> str:
    """A DICOM wildcard pattern as a LIKE pattern (escape character '\\')."""
    out = []
    for ch in value:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _string_match(column: Any, value: str) -> ColumnElement[bool]:
    if "*" in value or "?" in value:
        if value.strip("*") == "":
            return column.is_not(None) | column.is_(None)  # '*' matches everything
        return column.like(_like(value), escape="\\")
    return column == value


def _pn_match(attr: Attr, value: str, fuzzy: bool, case_insensitive: bool) -> ColumnElement[bool]:
    if fuzzy and attr.words is not None:
        words = (person_name_words(value.replace("*", "").replace("?", "")) or "").split()
        if not words:
            return attr.words.is_not(None) | attr.words.is_(None)
        return and_(*(attr.words.like(f"% {_like(w)}%", escape="\\") for w in words))
    column = attr.folded if case_insensitive else attr.column
    text = fold(value) if case_insensitive else value
    if text.strip("*") == "" and "*" in text:
        return column.is_not(None) | column.is_(None)
    pattern = _like(text)
    # A PN value is up to three component groups (alphabetic=ideographic=phonetic): match any group
    return or_(
        column.like(pattern, escape="\\"),
        column.like(pattern + "=%", escape="\\"),
        column.like("%=" + pattern, escape="\\"),
        column.like("%=" + pattern + "=%", escape="\\"),
    )


def _range(column: Any, value: str, kind: str) -> ColumnElement[bool]:
    lo, sep, hi = value.partition("-")
    if not sep:
        return column == value if kind == "date" else column.like(_like(value) + "%", escape="\\")
    clauses = []
    if lo:
        clauses.append(column >= lo)
    if hi:
        clauses.append(column <= (hi if kind == "date" else (hi + "595959.999999"[len(hi):])))
    return and_(*clauses)


def _condition(attr: Attr, value: str, query: Query, case_insensitive: bool) -> ColumnElement[bool]:
    if attr.keyword == "ModalitiesInStudy":
        modalities = [m for m in value.split("\\") if m]
        return exists().where(
            Series.study_instance_uid == Study.study_instance_uid,
            or_(*(_string_match(Series.modality, m) for m in modalities)),
        )
    if attr.keyword == "SOPClassesInStudy":
        return exists().where(Instance.study_instance_uid == Study.study_instance_uid,
                              Instance.sop_class_uid.in_(value.split("\\")))
    if attr.kind == "uid":
        return attr.column.in_([v.strip() for v in value.split("\\")])
    if attr.kind == "pn":
        return _pn_match(attr, value, query.fuzzy, case_insensitive)
    if attr.kind in ("date", "time"):
        return _range(attr.column, value, attr.kind)
    if attr.kind == "int":
        return attr.column == int(value)
    if "\\" in value:  # value list (PS3.4 C.2.2.2.1 allows it for several VRs)
        return or_(*(_string_match(attr.column, v) for v in value.split("\\")))
    return _string_match(attr.column, value)


def build(query: Query, *, study_uid: str | None = None, series_uid: str | None = None,
          case_insensitive: bool = True) -> Select[Any]:
    """The SELECT for one page of results at the query's level, filters and path scope applied."""
    if query.level == "study":
        stmt = select(Study)
        order = [Study.study_date.desc(), Study.study_time.desc(), Study.study_instance_uid]
    elif query.level == "series":
        stmt = select(Series, Study).join(Study, Series.study_instance_uid == Study.study_instance_uid)
        order = [Series.study_instance_uid, Series.series_number, Series.series_instance_uid]
    else:
        stmt = (select(Instance, Series, Study)
                .join(Series, Instance.series_instance_uid == Series.series_instance_uid)
                .join(Study, Instance.study_instance_uid == Study.study_instance_uid))
        order = [Instance.series_instance_uid, Instance.instance_number, Instance.sop_instance_uid]
    conditions: list[ColumnElement[bool]] = []
    if study_uid is not None:
        conditions.append(Study.study_instance_uid == study_uid)
    if series_uid is not None:
        conditions.append(Series.series_instance_uid == series_uid)
    for attr, value in query.filters:
        conditions.append(_condition(attr, value, query, case_insensitive))
    if conditions:
        stmt = stmt.where(and_(*conditions))
    return stmt.order_by(*order).limit(query.limit).offset(query.offset)


# ---- results ---------------------------------------------------------------------------------
def _element(keyword: str, value: Any) -> dict[str, Any]:
    tag = tag_for_keyword(keyword)
    vr = str(dictionary_VR(tag))
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list) else [value]
    return {"vr": vr, "Value": values}


def _members(text: str) -> dict[str, Any]:
    return json.loads("{" + text + "}") if text else {}


def _select_tags(query: Query, available: dict[str, Any]) -> dict[str, Any]:
    wanted = {f"{int(tag_for_keyword(k)):08X}" for k in DEFAULTS[query.level]} | query.include
    if query.include_all:
        return dict(sorted(available.items()))
    return {tag: available[tag] for tag in sorted(wanted) if tag in available}


async def search(session: AsyncSession, query: Query, *, study_uid: str | None = None,
                 series_uid: str | None = None, case_insensitive: bool = True) -> list[dict[str, Any]]:
    """Run the query; DICOM JSON objects without RetrieveURL (the caller knows the base URL)."""
    stmt = build(query, study_uid=study_uid, series_uid=series_uid, case_insensitive=case_insensitive)
    rows = (await session.execute(stmt)).all()
    if not rows:
        return []
    if query.level == "study":
        return await _study_results(session, query, [r[0] for r in rows])
    if query.level == "series":
        return await _series_results(session, query, [(r[0], r[1]) for r in rows])
    return _instance_results(query, [(r[0], r[1], r[2]) for r in rows])


def _study_attrs(study: Study) -> dict[str, Any]:
    attrs = _members(study.attributes_json)
    attrs["0020000D"] = _element("StudyInstanceUID", study.study_instance_uid)
    attrs["00080056"] = _element("InstanceAvailability", "ONLINE")
    return attrs


async def _study_results(session: AsyncSession, query: Query, studies: list[Study]) -> list[dict[str, Any]]:
    uids = [s.study_instance_uid for s in studies]
    counts = {
        uid: (n_series, n_instances)
        for uid, n_series, n_instances in (await session.execute(
            select(Instance.study_instance_uid, func.count(distinct(Instance.series_instance_uid)),
                   func.count()).where(Instance.study_instance_uid.in_(uids))
            .group_by(Instance.study_instance_uid)
        )).all()
    }
    modalities: dict[str, list[str]] = defaultdict(list)
    for uid, modality in (await session.execute(
        select(Series.study_instance_uid, Series.modality).where(Series.study_instance_uid.in_(uids))
        .where(Series.modality.is_not(None)).distinct().order_by(Series.modality)
    )).all():
        modalities[uid].append(modality)
    classes: dict[str, list[str]] = defaultdict(list)
    wants_classes = query.include_all or ATTRS_BY_KEYWORD["SOPClassesInStudy"].tag in query.include
    if wants_classes:
        for uid, sop_class in (await session.execute(
            select(Instance.study_instance_uid, Instance.sop_class_uid)
            .where(Instance.study_instance_uid.in_(uids)).distinct().order_by(Instance.sop_class_uid)
        )).all():
            classes[uid].append(sop_class)
    results = []
    for study in studies:
        attrs = _study_attrs(study)
        n_series, n_instances = counts.get(study.study_instance_uid, (0, 0))
        attrs["00080061"] = _element("ModalitiesInStudy", modalities.get(study.study_instance_uid))
        attrs["00201206"] = _element("NumberOfStudyRelatedSeries", n_series)
        attrs["00201208"] = _element("NumberOfStudyRelatedInstances", n_instances)
        if wants_classes:
            attrs["00080062"] = _element("SOPClassesInStudy", classes.get(study.study_instance_uid))
        results.append(_select_tags(query, attrs))
    return results


async def _series_results(session: AsyncSession, query: Query,
                          rows: list[tuple[Series, Study]]) -> list[dict[str, Any]]:
    uids = [series.series_instance_uid for series, _ in rows]
    counts = dict((await session.execute(
        select(Instance.series_instance_uid, func.count())
        .where(Instance.series_instance_uid.in_(uids)).group_by(Instance.series_instance_uid)
    )).all())
    results = []
    for series, study in rows:
        attrs = _study_attrs(study) if (query.include_all or query.include) else {}
        attrs.update(_members(series.attributes_json))
        attrs["0020000D"] = _element("StudyInstanceUID", series.study_instance_uid)
        attrs["0020000E"] = _element("SeriesInstanceUID", series.series_instance_uid)
        attrs["00201209"] = _element("NumberOfSeriesRelatedInstances",
                                     counts.get(series.series_instance_uid, 0))
        results.append(_select_tags(query, attrs))
    return results


def _instance_results(query: Query, rows: list[tuple[Instance, Series, Study]]) -> list[dict[str, Any]]:
    results = []
    for instance, series, study in rows:
        attrs = _study_attrs(study) if (query.include_all or query.include) else {}
        attrs.update(_members(series.attributes_json))
        attrs.update(json.loads(instance.metadata_json))
        attrs["00080056"] = _element("InstanceAvailability", "ONLINE")
        attrs["00083002"] = _element("AvailableTransferSyntaxUID", instance.transfer_syntax_uid)
        if not query.include_all:
            # bulk data is never part of a QIDO answer unless everything was asked for
            attrs = {t: v for t, v in attrs.items() if "BulkDataURI" not in v}
        else:
            attrs = {t: v for t, v in attrs.items() if "BulkDataURI" not in v and "InlineBinary" not in v}
        results.append(_select_tags(query, attrs))
    return results


ATTRS_BY_KEYWORD = {a.keyword: a for a in _ATTRS}
