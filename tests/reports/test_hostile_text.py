"""Text read from a hostile node (control characters, lone surrogates, markup) must still give
documents that validate: evidence is data, never structure."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from obelisk.reports.model import load_bundle
from obelisk.reports.render import render

text = st.text(alphabet=st.characters(codec=None, blacklist_categories=()), max_size=40)


@pytest.fixture(scope="module")
def validators(shared_dir):
    import jsonschema

    return {
        "ckl": etree.XMLSchema(etree.parse(str(shared_dir / "schemas" / "U_Checklist_Schema_V2.xsd"))),
        "sarif": jsonschema.Draft7Validator(
            json.loads((shared_dir / "schemas" / "sarif-schema-2.1.0.json").read_text())),
    }


def _report(values: list[str]) -> dict:
    v = itertools.cycle(values)
    return {
        "schema": "obelisk.report/1", "generated_at": "2026-11-24T04:00:00Z", "tool_version": next(v),
        "command": next(v),
        "subject": {"kind": "node", "name": next(v) or "n", "digest": next(v), "attributes": {next(v): next(v)}},
        "findings": [{
            "id": next(v) or "x", "title": next(v), "status": status, "severity": "high", "target": next(v),
            "observed": next(v), "expected": next(v), "detail": next(v), "remediation": next(v),
            "benchmark": next(v), "section": next(v),
            "evidence": [{"kind": "file", "source": "/" + next(v), "detail": next(v), "location": next(v)}],
            "references": [{"scheme": "stig", "id": next(v) or "V-1"}, {"scheme": "cci", "id": next(v)},
                           {"scheme": "nist-800-53", "id": "AC-3"}, {"scheme": next(v), "id": next(v)}],
            **({"waiver": {"id": "x", "reason": next(v), "approver": next(v), "expires": "2030-01-01"}}
               if status == "waived" else {}),
        } for status in ("pass", "fail", "error", "skip", "manual", "waived")],
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(text, min_size=1, max_size=8))
def test_every_format_stays_valid(tmp_path, validators, values):
    from trestle.oscal.assessment_results import AssessmentResults

    path = tmp_path / "hostile.json"
    # ensure_ascii: lone surrogates travel as \\udXXX escapes, as a hostile file would carry them
    path.write_text(json.dumps(_report(values), ensure_ascii=True))
    bundle = load_bundle([path])
    validators["ckl"].assertValid(etree.fromstring(render(bundle, "ckl")))
    etree.fromstring(render(bundle, "junit"))
    sarif = json.loads(render(bundle, "sarif"))
    errors = list(validators["sarif"].iter_errors(sarif))
    assert not errors, (list(errors[0].absolute_path), errors[0].message[:300])
    AssessmentResults.model_validate(json.loads(render(bundle, "oscal"))["assessment-results"])
    json.loads(render(bundle, "cklb"))
    render(bundle, "csv").decode("utf-8")
    html = render(bundle, "html").decode("utf-8")
    assert html.count("<script") == 2  # metadata block and the filter script, nothing injected
