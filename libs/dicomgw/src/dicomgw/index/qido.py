"""QIDO-RS query building: PS3.4 C.2.2.2 matching of query parameters, all of it done in SQL.

``parse_query`` turns a request's parameters into a ``Query`` (``BadRequest`` for malformed values,
a warning for every key it ignores); ``search`` runs it at study, series or instance level and returns
one page of DICOM JSON objects. Computed attributes (ModalitiesInStudy, NumberOfStudyRelated*, ...) are
aggregated for the whole page in one grouped query each, never per row.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, Select, and_, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from dicomgw.dicom.levels import INSTANCE_QIDO_TAGS, SERIES_LEVEL_TAGS, STUDY_LEVEL_TAGS
from dicomgw.dicom.names import fold, person_name_words
from dicomgw.dicom.parse import valid_uid
from dicomgw.errors import BadRequest
from dicomgw.index.models import Instance, Series, Study

Level = Literal["study", "series", "instance"]
# uid: list matching only; cs: code strings (lists, wildcards); str: other strings; pn: person names;
# date/time: single values and ranges; int: IS values; computed: aggregated over lower levels
Kind = Literal["uid", "cs", "str", "pn", "date", "time", "int", "computed"]
LEVELS: tuple[Level, ...] = ("study", "series", "instance")
RETRIEVE_URL = "00081190"
TRUNCATED = ("The number of results exceeded the maximum supported by the server. "
             "Additional results can be requested.")


@dataclass(frozen=True)
class Attr:
    """A matching key: the attribute, the level it belongs to, how it matches, and its column(s)."""

    keyword: str
    level: Level
    kind: Kind
    column: Any = None
    folded: Any = None  # PN: case-folded column
    words: Any = None  # PN: folded component words, for fuzzy matching

    @property
    def tag(self) -> str:
        return _tag_hex(self.keyword)


def _tag_hex(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - a typo in the tables of this module
        raise KeyError(keyword)
    return f"{int(tag):08X}"


_ATTRS = [
    Attr("StudyInstanceUID", "study", "uid", Study.study_instance_uid),
    Attr("StudyDate", "study", "date", Study.study_date),
    Attr("StudyTime", "study", "time", Study.study_time),
    Attr("AccessionNumber", "study", "str", Study.accession_number),
    Attr("StudyID", "study", "str", Study.study_id),
    Attr("StudyDescription", "study", "str", Study.study_description),
    Attr("PatientID", "study", "str", Study.patient_id),
    Attr("PatientBirthDate", "study", "date", Study.patient_birth_date),
    Attr("PatientSex", "study", "cs", Study.patient_sex),
    Attr("PatientName", "study", "pn", Study.patient_name, Study.patient_name_folded,
         Study.patient_name_words),
    Attr("ReferringPhysicianName", "study", "pn", Study.referring_physician_name,
         Study.referring_physician_name_folded),
    Attr("ModalitiesInStudy", "study", "computed", Series.modality),
    Attr("SOPClassesInStudy", "study", "computed", Instance.sop_class_uid),
    Attr("NumberOfStudyRelatedSeries", "study", "computed"),
    Attr("NumberOfStudyRelatedInstances", "study", "computed"),
    Attr("SeriesInstanceUID", "series", "uid", Series.series_instance_uid),
    Attr("Modality", "series", "cs", Series.modality),
    Attr("SeriesNumber", "series", "int", Series.series_number),
    Attr("SeriesDescription", "series", "str", Series.series_description),
    Attr("SeriesDate", "series", "date", Series.series_date),
    Attr("SeriesTime", "series", "time", Series.series_time),
    Attr("BodyPartExamined", "series", "cs", Series.body_part_examined),
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
_DEFAULT_KEYWORDS: dict[Level, list[str]] = {
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
DEFAULTS: dict[Level, frozenset[str]] = {
    level: frozenset(_tag_hex(k) for k in keywords) for level, keywords in _DEFAULT_KEYWORDS.items()
}
_STUDY_COMPUTED = {_tag_hex(k) for k in ("ModalitiesInStudy", "SOPClassesInStudy",
                                         "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")}
_SOP_CLASSES_IN_STUDY = _tag_hex("SOPClassesInStudy")
_SERIES_COUNT = _tag_hex("NumberOfSeriesRelatedInstances")
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")


def tag_of(key: str) -> str | None:
    """'PatientName' or '00100010' (any case) -> '00100010'; None if it names no attribute."""
    if _HEX_TAG.fullmatch(key):
        return key.upper()
    tag = tag_for_keyword(key)
    return f"{int(tag):08X}" if tag is not None else None


@dataclass
class Query:
    """A validated QIDO-RS request: level, path scope, matching keys and what to return."""

    level: Level
    # the partition searched (dicomgw.partitions); nothing of another partition is ever matched
    partition: str = "default"
    study_uid: str | None = None
    series_uid: str | None = None
    filters: list[tuple[Attr, str]] = field(default_factory=list)
    include_all: bool = False
    include: set[str] = field(default_factory=set)
    fuzzy: bool = False
    limit: int = 1000
    offset: int = 0
    # the server chose the page size (no limit, or more than the maximum): say so when results remain
    limit_capped: bool = True
    warnings: list[str] = field(default_factory=list)

    def returned_tags(self) -> frozenset[str]:
        """Default attributes of the level (PS3.18 10.6.3.3), of the levels above when the path does
        not name them, and every includefield / matching key."""
        tags = set(DEFAULTS[self.level]) | self.include
        if self.level != "study" and self.study_uid is None:
            tags |= DEFAULTS["study"]
        if self.level == "instance" and self.series_uid is None:
            tags |= DEFAULTS["series"]
        return frozenset(tags)

    def wants(self, tag: str) -> bool:
        return self.include_all or tag in self.returned_tags()


# ---- parsing ---------------------------------------------------------------------------------
def parse_query(level: Level, params: Iterable[tuple[str, str]], *, default_limit: int,
                max_limit: int, study_uid: str | None = None,
                series_uid: str | None = None, partition: str = "default") -> Query:
    """Validate and classify the query parameters of a QIDO-RS request."""
    for path_uid in (study_uid, series_uid):
        if path_uid is not None and not valid_uid(path_uid):
            raise BadRequest("a UID in the path is not a valid UID")
    query = Query(level=level, partition=partition, study_uid=study_uid, series_uid=series_uid,
                  limit=default_limit)
    for key, value in params:
        if key == "limit":
            _set_limit(query, value, max_limit)
        elif key == "offset":
            query.offset = _non_negative(key, value)
        elif key == "fuzzymatching":
            if value.strip().lower() not in ("true", "false"):
                raise BadRequest("fuzzymatching must be true or false")
            query.fuzzy = value.strip().lower() == "true"
        elif key == "includefield":
            _add_includefield(query, value)
        else:
            _add_filter(query, key, value)
    return query


# below the largest integer a database binds (2**63 - 1); an offset beyond any result means the same
_LARGEST = 2**62  # with room for the page arithmetic on top


def _non_negative(name: str, value: str) -> int:
    text = value.strip()
    # ASCII digits only: str.isdigit() also takes superscripts, which int() refuses
    if not text or not text.isascii() or not text.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer")
    return min(int(text), _LARGEST)


def _set_limit(query: Query, value: str, max_limit: int) -> None:
    limit = _non_negative("limit", value)
    if limit == 0:  # no limit asked for: the server's page size, as when the parameter is absent
        return
    query.limit = min(limit, max_limit)
    query.limit_capped = limit > max_limit


def _add_includefield(query: Query, value: str) -> None:
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        if item == "all":
            query.include_all = True
            continue
        tag = tag_of(item)
        if tag is None:
            query.warnings.append(f"includefield {item} names no attribute and was ignored")
        else:
            query.include.add(tag)


def _add_filter(query: Query, key: str, value: str) -> None:
    tag = tag_of(key)
    if tag is None:
        why = "sequence matching is not supported" if "." in key else "it names no attribute"
        query.warnings.append(f"The following key was ignored ({why}): {key}")
        return
    query.include.add(tag)  # attributes used as matching keys are returned (PS3.18 10.6.3.3)
    attr = ATTRS.get(tag)
    allowed = LEVELS[: LEVELS.index(query.level) + 1]
    if attr is None or attr.level not in allowed or (attr.kind == "computed" and attr.column is None):
        name = keyword_for_tag(int(tag, 16)) or tag
        query.warnings.append(f"The following key was ignored (not a matching key at "
                              f"{query.level} level): {name}")
        return
    if value == "" or set(value) == {"*"}:
        return  # universal matching (PS3.4 C.2.2.2.3): every entity, attribute returned
    _validate(attr, value)
    query.filters.append((attr, value))


def _values(attr: Attr, value: str) -> list[str]:
    """The values of a value list: backslash-separated, or comma-separated for UIDs and code strings
    (PS3.18 8.3.4.1), which cannot contain commas."""
    listed = attr.kind in ("uid", "cs") or attr.keyword in ("ModalitiesInStudy", "SOPClassesInStudy")
    strip = attr.kind in ("uid", "int") or attr.keyword == "SOPClassesInStudy"
    return [v.strip() if strip else v for v in re.split(r"[\\,]" if listed else r"\\", value)
            if v.strip()]


def _validate(attr: Attr, value: str) -> None:
    if attr.kind == "uid" or attr.keyword == "SOPClassesInStudy":
        if not all(valid_uid(uid) for uid in _values(attr, value)):
            raise BadRequest(f"{attr.keyword} has a malformed UID")
    elif attr.kind == "date":
        _validate_range(attr, value, _valid_date)
    elif attr.kind == "time":
        _validate_range(attr, value, _TIME.fullmatch)
    elif attr.kind == "int":
        if not all(re.fullmatch(r"[+-]?\d+", v) for v in _values(attr, value)):
            raise BadRequest(f"{attr.keyword} must be an integer")


def _valid_date(text: str) -> bool:
    if not _DATE.fullmatch(text):
        return False
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


def _validate_range(attr: Attr, value: str, valid: Any) -> None:
    lo, sep, hi = value.partition("-")
    if not sep:
        lo = hi = value
    if not (lo or hi) or (lo and not valid(lo)) or (hi and not valid(hi)):
        raise BadRequest(f"{attr.keyword} must be a {attr.kind} or a {attr.kind} range "
                         f"({'YYYYMMDD' if attr.kind == 'date' else 'HHMMSS.FFFFFF'}, a-b, a-, -b)")
    if attr.kind == "date" and lo and hi and lo > hi:
        raise BadRequest(f"{attr.keyword} range ends before it starts")


# ---- matching --------------------------------------------------------------------------------
def has_wildcards(value: str) -> bool:
    return "*" in value or "?" in value


def like_pattern(value: str) -> str:
    """A DICOM wildcard pattern as a LIKE pattern with escape character '\\' (PS3.4 C.2.2.2.4)."""
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


def string_match(column: Any, value: str) -> ColumnElement[bool]:
    """Single value matching, or wildcard matching when the value holds '*' or '?'."""
    if not has_wildcards(value):
        return column == value  # type: ignore[no-any-return]
    if set(value) == {"*"}:
        return true()
    return column.like(like_pattern(value), escape="\\")  # type: ignore[no-any-return]


def _pn_group_match(column: Any, text: str) -> ColumnElement[bool]:
    """A PN value is up to three component groups (alphabetic=ideographic=phonetic): match any."""
    if set(text) == {"*"}:
        return true()
    pattern = like_pattern(text)
    whole = column.like(pattern, escape="\\") if has_wildcards(text) else column == text
    return or_(
        whole,
        column.like(pattern + "=%", escape="\\"),
        column.like("%=" + pattern, escape="\\"),
        column.like("%=" + pattern + "=%", escape="\\"),
    )


def _fuzzy_match(attr: Attr, value: str) -> ColumnElement[bool]:
    """fuzzymatching=true: every word of the value starts some component of the name, any case."""
    words = (person_name_words(value.replace("*", " ").replace("?", " ")) or "").split()
    if not words:
        return true()
    if attr.words is not None:
        return and_(*(attr.words.like(f"% {like_pattern(w)}%", escape="\\") for w in words))
    column = attr.folded
    return and_(*(
        or_(*(column.like(f"{lead}{like_pattern(w)}%", escape="\\")
              for lead in ("", "%^", "% ", "%=")))
        for w in words
    ))


def _pn_match(attr: Attr, value: str, fuzzy: bool, case_insensitive: bool) -> ColumnElement[bool]:
    if fuzzy:
        return _fuzzy_match(attr, value)
    if case_insensitive:
        return _pn_group_match(attr.folded, fold(value))
    return _pn_group_match(attr.column, value)


def range_match(column: Any, value: str, kind: str) -> ColumnElement[bool]:
    """Date or time single value / range matching (PS3.4 C.2.2.2.5): 'a-b', 'a-', '-b'.

    Times compare as strings of their components; a bound given to the hour or minute covers that
    whole hour or minute, and a single time value matches every time that begins with it.
    """
    lo, sep, hi = value.partition("-")
    if not sep:
        if kind == "date":
            return column == value  # type: ignore[no-any-return]
        return column.like(like_pattern(value) + "%", escape="\\")  # type: ignore[no-any-return]
    clauses = []
    if lo:
        clauses.append(column >= lo)
    if hi:
        clauses.append(column <= (hi if kind == "date" else hi + "595959.999999"[len(hi):]))
    return and_(*clauses)


def _modalities_in_study(value: str, partition: str) -> ColumnElement[bool]:
    # a semi-join the planner can start from the modality index; not correlated, so it is right at
    # series level too, where the outer query has a Series of its own
    modalities = _values(ATTRS_BY_KEYWORD["ModalitiesInStudy"], value)
    return Study.study_instance_uid.in_(
        select(Series.study_instance_uid)
        .where(Series.partition_name == partition,
               or_(*(string_match(Series.modality, m) for m in modalities))).correlate(None))


def _sop_classes_in_study(value: str, partition: str) -> ColumnElement[bool]:
    classes = _values(ATTRS_BY_KEYWORD["SOPClassesInStudy"], value)
    return Study.study_instance_uid.in_(
        select(Instance.study_instance_uid).where(Instance.partition_name == partition,
                                                  Instance.sop_class_uid.in_(classes))
        .correlate(None))


def condition(attr: Attr, value: str, *, fuzzy: bool = False,
              case_insensitive: bool = True, partition: str = "default") -> ColumnElement[bool]:
    """The SQL condition of one matching key."""
    if attr.keyword == "ModalitiesInStudy":
        return _modalities_in_study(value, partition)
    if attr.keyword == "SOPClassesInStudy":
        return _sop_classes_in_study(value, partition)
    values = _values(attr, value)
    if attr.kind == "uid":
        return attr.column.in_(values)  # type: ignore[no-any-return]
    if attr.kind == "int":
        return attr.column.in_([int(v) for v in values])  # type: ignore[no-any-return]
    if attr.kind in ("date", "time"):
        return range_match(attr.column, value, attr.kind)
    if attr.kind == "pn":
        return or_(*(_pn_match(attr, v, fuzzy, case_insensitive) for v in values))
    return or_(*(string_match(attr.column, v) for v in values))


def build(query: Query, *, case_insensitive: bool = True) -> Select[*tuple[Any, ...]]:
    """The SELECT of one page of results (one row more, to tell whether more remain)."""
    stmt: Select[*tuple[Any, ...]]
    order: list[Any]
    partition = query.partition
    if query.level == "study":
        stmt = select(Study)
        order = [Study.study_date.desc().nulls_last(), Study.study_time.desc().nulls_last(),
                 Study.study_instance_uid]
    elif query.level == "series":
        stmt = select(Series, Study).join(Study, and_(Series.partition_name == Study.partition_name,
                                                      Series.study_instance_uid == Study.study_instance_uid))
        order = [Series.study_instance_uid, Series.series_number.asc().nulls_last(),
                 Series.series_instance_uid]
    else:
        stmt = (select(Instance, Series, Study)
                .join(Series, and_(Instance.partition_name == Series.partition_name,
                                   Instance.series_instance_uid == Series.series_instance_uid))
                .join(Study, and_(Instance.partition_name == Study.partition_name,
                                  Instance.study_instance_uid == Study.study_instance_uid))
                .options(defer(Instance.layout_json)))
        if not needs_metadata(query):
            stmt = stmt.options(defer(Instance.metadata_json))
        order = [Instance.study_instance_uid, Instance.series_instance_uid,
                 Instance.instance_number.asc().nulls_last(), Instance.sop_instance_uid]
    level_table: Any = {"study": Study, "series": Series, "instance": Instance}[query.level]
    conditions: list[ColumnElement[bool]] = [level_table.partition_name == partition]
    if query.study_uid is not None:
        conditions.append(Study.study_instance_uid == query.study_uid)
    if query.series_uid is not None:
        conditions.append(Series.series_instance_uid == query.series_uid)
    conditions += [condition(attr, value, fuzzy=query.fuzzy, case_insensitive=case_insensitive,
                             partition=partition)
                   for attr, value in query.filters]
    stmt = stmt.where(and_(*conditions))
    return stmt.order_by(*order).limit(query.limit + 1).offset(query.offset)


# ---- results ---------------------------------------------------------------------------------
@functools.cache
def _vr(keyword: str) -> str:
    return str(dictionary_VR(keyword))


def _element(keyword: str, value: Any) -> dict[str, Any]:
    vr = _vr(keyword)
    if value is None or value == "" or value == []:
        return {"vr": vr}
    return {"vr": vr, "Value": value if isinstance(value, list) else [value]}


def _members(text: str) -> dict[str, Any]:
    # orjson: decoding each result's stored JSON was 40 % of a search answering hundreds of studies
    result: dict[str, Any] = orjson.loads("{" + text + "}") if text else {}
    return result


class _Answers:
    """Rows of a search into DICOM JSON objects (without RetrieveURL); studies and series shared by
    the rows are decoded once."""

    def __init__(self, query: Query) -> None:
        self.query = query
        self.classes_wanted = query.wants(_SOP_CLASSES_IN_STUDY)
        self.whole = needs_metadata(query)
        self.study_attrs: dict[str, dict[str, Any]] = {}
        self.series_attrs: dict[str, dict[str, Any]] = {}

    def of(self, rows: Sequence[Any]) -> list[dict[str, Any]]:
        query = self.query
        results = []
        for row in rows:
            study: Study = row[-1]
            if study.study_instance_uid not in self.study_attrs:
                self.study_attrs[study.study_instance_uid] = _study_attrs(study, self.classes_wanted)
            attrs = dict(self.study_attrs[study.study_instance_uid])
            if query.level != "study":
                series: Series = row[0] if query.level == "series" else row[1]
                if series.series_instance_uid not in self.series_attrs:
                    self.series_attrs[series.series_instance_uid] = _series_attrs(series)
                attrs.update(self.series_attrs[series.series_instance_uid])
            if query.level == "instance":
                attrs.update(_instance_attrs(row[0], self.whole))
            results.append(_select(query, attrs))
        return results


async def search(session: AsyncSession, query: Query, *,
                 case_insensitive: bool = True) -> list[dict[str, Any]]:
    """One page of results: DICOM JSON objects without RetrieveURL (the caller knows the base URL).

    When more results remain and the server chose the page size, a PS3.18 8.3.4.4 warning is added to
    ``query.warnings``.
    """
    rows = list((await session.execute(build(query, case_insensitive=case_insensitive))).all())
    if len(rows) > query.limit:
        rows = rows[: query.limit]
        if query.limit_capped:
            query.warnings.append(TRUNCATED)
    return _Answers(query).of(rows) if rows else []


# rows read from the cursor at a time by search_pages
PAGE_ROWS = 500


async def search_pages(session: AsyncSession, query: Query, *, case_insensitive: bool = True,
                       page_rows: int = PAGE_ROWS) -> AsyncGenerator[list[dict[str, Any]]]:
    """Every result of ``query`` up to its limit, ``page_rows`` at a time: memory holds one page
    whatever the number of results (10,000 instances of a research series are a few hundred MB as
    Python objects). When the first page is the whole answer, it says (in ``query.warnings``) whether
    more results remained; beyond one page, that is ``more_results``'s to say before the answer starts.

    The first page is read as a plain query (a server-side cursor costs SQLite several more hops to
    its thread: 1.5-2 ms on every small search); only what lies beyond it comes from a cursor.
    """
    answers = _Answers(query)
    stmt = build(query, case_insensitive=case_insensitive)
    first = min(query.limit, page_rows)
    rows = list((await session.execute(stmt.limit(first + 1))).all())
    if len(rows) > query.limit and query.limit_capped:  # the first page is the whole answer
        query.warnings.append(TRUNCATED)
    yield answers.of(rows[:first])
    if len(rows) <= first or first == query.limit:
        return
    result = await session.stream(stmt.offset(query.offset + first).limit(query.limit - first))
    try:
        async for page in result.partitions(page_rows):
            yield answers.of(page)
    finally:
        await result.close()


async def more_results(session: AsyncSession, query: Query, *, case_insensitive: bool = True) -> bool:
    """Whether results remain beyond ``query``'s limit."""
    beyond = build(query, case_insensitive=case_insensitive).limit(1).offset(query.offset + query.limit)
    return (await session.execute(beyond)).first() is not None


def _select(query: Query, available: dict[str, Any]) -> dict[str, Any]:
    if query.include_all:
        return dict(sorted(available.items()))
    wanted = query.returned_tags()
    return {tag: available[tag] for tag in sorted(wanted) if tag in available}


def _study_attrs(study: Study, classes_wanted: bool) -> dict[str, Any]:
    """The study's attributes, those QIDO-RS computes included (kept on the row by each commit)."""
    attrs = _members(study.attributes_json)
    attrs["0020000D"] = _element("StudyInstanceUID", study.study_instance_uid)
    attrs["00080056"] = _element("InstanceAvailability", "ONLINE")
    attrs["00201206"] = _element("NumberOfStudyRelatedSeries", study.num_series)
    attrs["00201208"] = _element("NumberOfStudyRelatedInstances", study.num_instances)
    # A study none of whose instances names a Modality (a Type 1 attribute, missing in real-world
    # files) has no Modalities in Study to report: the attribute is left out rather than sent empty,
    # because OHIF's study list (getModalities) fails on an empty ModalitiesInStudy and then lists
    # nothing at all ("Data Source Connection Error"). See docs/conformance.md.
    if study.modalities:
        attrs["00080061"] = _element("ModalitiesInStudy", study.modalities.split("\\"))
    if classes_wanted:
        attrs[_SOP_CLASSES_IN_STUDY] = _element(
            "SOPClassesInStudy", study.sop_classes.split("\\") if study.sop_classes else None)
    return attrs


def _series_attrs(series: Series) -> dict[str, Any]:
    attrs = _members(series.attributes_json)
    attrs["0020000D"] = _element("StudyInstanceUID", series.study_instance_uid)
    attrs["0020000E"] = _element("SeriesInstanceUID", series.series_instance_uid)
    attrs[_SERIES_COUNT] = _element("NumberOfSeriesRelatedInstances", series.num_instances)
    return attrs


def _instance_attrs(instance: Instance, whole: bool) -> dict[str, Any]:
    """The instance's attributes: those kept for QIDO-RS, or (``whole``) all of its metadata."""
    if whole or not instance.qido_json:  # qido_json is empty on rows 0007 has not filled
        attrs: dict[str, Any] = orjson.loads(instance.metadata_json)
        # bulk data (pixel data, overlays, ...) is for WADO-RS, never part of a QIDO-RS answer
        attrs = {t: v for t, v in attrs.items() if "BulkDataURI" not in v and "InlineBinary" not in v}
    else:
        attrs = _members(instance.qido_json)
    attrs["00080056"] = _element("InstanceAvailability", "ONLINE")
    attrs["00083002"] = _element("AvailableTransferSyntaxUID", instance.transfer_syntax_uid)
    return attrs


# what an instance search answers without an instance's whole metadata: study and series rows, the
# aggregates, and the instance attributes kept for QIDO-RS
_WITHOUT_METADATA = frozenset(
    f"{t:08X}" for t in STUDY_LEVEL_TAGS | SERIES_LEVEL_TAGS | INSTANCE_QIDO_TAGS
) | _STUDY_COMPUTED | {_SERIES_COUNT, _tag_hex("InstanceAvailability"),
                       _tag_hex("AvailableTransferSyntaxUID")}


def needs_metadata(query: Query) -> bool:
    """Whether an instance search must read each instance's whole metadata (includefield=all, or an
    attribute not kept for QIDO-RS)."""
    return query.level == "instance" and (
        query.include_all or not query.returned_tags() <= _WITHOUT_METADATA)


ATTRS_BY_KEYWORD = {a.keyword: a for a in _ATTRS}
