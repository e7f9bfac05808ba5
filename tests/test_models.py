"""One definition per fact: the API's job model is the job record, and the states are the record's."""

from __future__ import annotations

import typing

import msgspec

from runtime.core.records import STATES, JobRecord, State
from runtime.web import models as m
from runtime.web.dashboard_api import JobDetail


def _record_fields() -> dict[str, object]:
    hints = typing.get_type_hints(JobRecord)
    return {f.name: hints[f.name] for f in msgspec.structs.fields(JobRecord)}


def test_the_api_job_is_the_record_minus_the_fields_it_declares_record_only() -> None:
    # Given the record's fields and types
    record = _record_fields()
    api = {name: f.annotation for name, f in m.Job.model_fields.items() if name != "deduplicated"}
    # Then every API field is a record field of the same type (state narrowed to the State literal)
    for name, annotation in api.items():
        assert name in record, "Job.%s is not a JobRecord field" % name
        expected = State if name == "state" else record[name]
        assert annotation == expected, "Job.%s is %r, JobRecord.%s is %r" % (name, annotation, name, expected)
    # And what the API leaves out is exactly what it says it leaves out
    assert set(record) - set(api) == m.RECORD_ONLY


def test_the_dashboard_detail_adds_back_what_the_api_leaves_out_but_delay_reason() -> None:
    assert m.RECORD_ONLY - set(JobDetail.model_fields) == {"delay_reason"}


def test_states_are_defined_once() -> None:
    assert STATES == ("waiting", "delayed", "active", "waiting-children", "completed", "failed")
    assert typing.get_args(m.JobsQuery.model_fields["state"].annotation) == (State, type(None))
    assert {f.alias or name for name, f in m.Counts.model_fields.items()} == set(STATES)
