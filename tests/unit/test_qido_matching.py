"""QIDO-RS matching rules, translated to SQL, agree with their PS3.4 definitions (hypothesis properties).

Each property runs the SQL the query builder makes against a real (in-memory) SQLite index with the
same pragmas as the service, and compares with a direct reading of the rule in Python.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, delete, event, insert, select, text
from sqlalchemy.engine import Connection

from dicomgw.dicom.names import fold, fold_person_name, person_name_words
from dicomgw.errors import BadRequest
from dicomgw.index.db import _sqlite_pragmas
from dicomgw.index.models import Base, Study
from dicomgw.index.qido import ATTRS_BY_KEYWORD, build, condition, parse_query, range_match, string_match

CHECKS = settings(max_examples=150, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def conn() -> Iterator[Connection]:
    engine = create_engine("sqlite://")
    event.listen(engine, "connect", _sqlite_pragmas)
    with engine.connect() as connection:
        Base.metadata.create_all(connection)
        yield connection


def _matches(conn: Connection, row: dict[str, Any], clause: Any) -> bool:
    """Whether one study row with these columns satisfies the clause."""
    conn.execute(delete(Study))
    conn.execute(insert(Study).values(study_instance_uid="1.2.3", attributes_json="", **row))
    return conn.execute(select(Study.study_instance_uid).where(clause)).first() is not None


def _reference_wildcard(pattern: str, value: str) -> bool:
    """PS3.4 C.2.2.2.4: '*' any run of characters, '?' exactly one, everything else itself."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


# SQL LIKE's own specials and the escape character are in the alphabet on purpose
TEXT = st.text(alphabet=st.sampled_from("ab%_\\*?^=é김 "), max_size=8)
PLAIN = st.text(alphabet=st.sampled_from("ab%_\\^é김 "), max_size=6)


@CHECKS
@given(pattern=TEXT, value=PLAIN)
def test_wildcard_matching_in_sql_is_the_dicom_rule(conn: Connection, pattern: str, value: str) -> None:
    got = _matches(conn, {"patient_id": value}, string_match(Study.patient_id, pattern))
    assert got == _reference_wildcard(pattern, value)


@CHECKS
@given(prefix=PLAIN, rest=PLAIN, value=PLAIN)
def test_a_value_is_found_by_its_prefix_and_a_star(conn: Connection, prefix: str, rest: str,
                                                  value: str) -> None:
    assert _matches(conn, {"patient_id": prefix + rest}, string_match(Study.patient_id, prefix + "*"))
    assume(not value.startswith(prefix))
    assert not _matches(conn, {"patient_id": value}, string_match(Study.patient_id, prefix + "*"))


COMPONENT = st.text(alphabet=st.sampled_from("abcXYZéÉøÖ김희중山田 '-"), min_size=1, max_size=6)
GROUP = st.lists(COMPONENT, min_size=1, max_size=3).map("^".join)
NAME = st.lists(GROUP, min_size=1, max_size=3).map("=".join)


def _name_row(name: str) -> dict[str, Any]:
    return {"patient_name": name, "patient_name_folded": fold_person_name(name),
            "patient_name_words": person_name_words(name)}


@CHECKS
@given(name=NAME, which=st.integers(0, 2), upper=st.booleans())
def test_any_component_group_finds_the_name_in_any_case(conn: Connection, name: str, which: int,
                                                        upper: bool) -> None:
    group = name.split("=")[which % len(name.split("="))]
    query = group.upper() if upper else group
    assume(fold(query) == fold(group))  # case mappings that round-trip (not e.g. dotless i)
    attr = ATTRS_BY_KEYWORD["PatientName"]
    assert _matches(conn, _name_row(name), condition(attr, query, case_insensitive=True))
    # exact matching, when configured, tells cases apart
    exact = condition(attr, query, case_insensitive=False)
    assert _matches(conn, _name_row(name), exact) == (query in name.split("="))


@CHECKS
@given(name=NAME, data=st.data())
def test_fuzzy_matching_finds_a_name_by_the_start_of_any_component(conn: Connection, name: str,
                                                                   data: st.DataObject) -> None:
    words = (person_name_words(name) or "").split()
    assume(words)
    word = data.draw(st.sampled_from(words))
    prefix = word[: data.draw(st.integers(1, len(word)))]
    attr = ATTRS_BY_KEYWORD["PatientName"]
    assert _matches(conn, _name_row(name), condition(attr, prefix.upper(), fuzzy=True))
    assume(not any(w.startswith(fold("q" + prefix)) for w in words))
    assert not _matches(conn, _name_row(name), condition(attr, "q" + prefix, fuzzy=True))


DATES = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31)).map(
    lambda d: d.strftime("%Y%m%d"))


@CHECKS
@given(value=DATES, lo=st.one_of(st.none(), DATES), hi=st.one_of(st.none(), DATES))
def test_date_ranges_are_inclusive_and_may_be_open(conn: Connection, value: str, lo: str | None,
                                                   hi: str | None) -> None:
    assume(lo or hi)
    query = f"{lo or ''}-{hi or ''}"
    expected = (lo is None or lo <= value) and (hi is None or value <= hi)
    assert _matches(conn, {"study_date": value}, range_match(Study.study_date, query, "date")) == expected


TIMES = st.times().map(lambda t: t.strftime("%H%M%S") + (f".{t.microsecond:06d}" if t.microsecond else ""))


@CHECKS
@given(value=TIMES, bound=TIMES, precision=st.sampled_from([2, 4, 6]))
def test_a_time_bound_covers_its_whole_hour_minute_or_second(conn: Connection, value: str, bound: str,
                                                             precision: int) -> None:
    upper = bound[:precision]
    below = _matches(conn, {"study_time": value}, range_match(Study.study_time, f"-{upper}", "time"))
    assert below == (value[:precision] <= upper)
    above = _matches(conn, {"study_time": value}, range_match(Study.study_time, f"{upper}-", "time"))
    assert above == (value >= upper)


@given(day=st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 30)))
def test_a_real_date_is_accepted_and_an_impossible_one_refused(day: date) -> None:
    good = day.strftime("%Y%m%d")
    parse_query("study", [("StudyDate", good)], default_limit=10, max_limit=10)
    parse_query("study", [("StudyDate", f"{good}-{(day + timedelta(days=1)).strftime('%Y%m%d')}")],
                default_limit=10, max_limit=10)
    with pytest.raises(BadRequest):
        parse_query("study", [("StudyDate", f"{good[:6]}32")], default_limit=10, max_limit=10)


@given(key=st.text(max_size=20), value=st.sampled_from(["", "*"]))
def test_any_key_with_a_universal_value_never_fails(key: str, value: str) -> None:
    assume(key not in ("limit", "offset", "fuzzymatching", "includefield"))
    query = parse_query("instance", [(key, value)], default_limit=10, max_limit=10)
    assert query.filters == []


@given(limit=st.integers(0, 10**9), default=st.integers(1, 100), maximum=st.integers(1, 1000))
def test_the_page_size_never_exceeds_the_maximum(limit: int, default: int, maximum: int) -> None:
    default = min(default, maximum)
    query = parse_query("study", [("limit", str(limit))], default_limit=default, max_limit=maximum)
    assert 1 <= query.limit <= maximum
    assert query.limit_capped == (limit == 0 or limit > maximum)


@pytest.mark.parametrize(
    ("key", "value", "index"),
    [("PatientID", "PID-1", "ix_studies_patient_id"),
     ("PatientID", "PID*", "ix_studies_patient_id"),
     ("AccessionNumber", "A1", "ix_studies_accession_number"),
     ("StudyDate", "20240101-20240131", "ix_studies_date_time"),
     ("StudyID", "7", "ix_studies_study_id"),
     ("StudyDescription", "Chest*", "ix_studies_study_description"),
     ("PatientBirthDate", "19700101", "ix_studies_patient_birth_date"),
     ("StudyInstanceUID", "1.2.3\\1.2.4", "sqlite_autoindex_studies_1"),
     ("ModalitiesInStudy", "CT", "ix_series_modality"),
     ("SOPClassesInStudy", "1.2.840.10008.5.1.4.1.1.2", "ix_instances_sop_class_uid")],
)
def test_study_matching_keys_are_served_by_an_index(conn: Connection, key: str, value: str,
                                                    index: str) -> None:
    query = parse_query("study", [(key, value)], default_limit=10, max_limit=10)
    stmt = build(query).compile(conn, compile_kwargs={"literal_binds": True})
    plan = " ".join(str(row[-1]) for row in conn.execute(text(f"EXPLAIN QUERY PLAN {stmt}")))
    assert index in plan, plan


@pytest.mark.parametrize(
    ("key", "value", "index"),
    [("Modality", "MR", "ix_series_modality"),
     ("SeriesDate", "20240101-", "ix_series_series_date"),
     ("BodyPartExamined", "CHEST", "ix_series_body_part_examined"),
     ("SeriesDescription", "T1*", "ix_series_series_description")],
)
def test_series_matching_keys_are_served_by_an_index(conn: Connection, key: str, value: str,
                                                     index: str) -> None:
    query = parse_query("series", [(key, value)], default_limit=10, max_limit=10)
    stmt = build(query).compile(conn, compile_kwargs={"literal_binds": True})
    plan = " ".join(str(row[-1]) for row in conn.execute(text(f"EXPLAIN QUERY PLAN {stmt}")))
    assert index in plan, plan


def test_instances_of_a_series_are_listed_through_an_index(conn: Connection) -> None:
    query = parse_query("instance", [], default_limit=10, max_limit=10, study_uid="1.2",
                        series_uid="1.2.3")
    stmt = build(query).compile(conn, compile_kwargs={"literal_binds": True})
    plan = " ".join(str(row[-1]) for row in conn.execute(text(f"EXPLAIN QUERY PLAN {stmt}")))
    assert "SCAN instances" not in plan and "USING INDEX" in plan, plan
