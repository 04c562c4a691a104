"""Hostile bytes into every parser of this component: only one-line obelisk errors, never a crash."""

from __future__ import annotations

import base64
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obelisk.core.errors import ObeliskError
from obelisk.reports.signing import describe
from obelisk.reports.statement import MEDIA_TYPE, PAYLOAD_TYPE, parse_signature, parse_statement

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)


@SETTINGS
@given(st.binary(max_size=2048))
def test_signature_file_parse_raw_bytes(data):
    try:
        parse_signature(data)
    except ObeliskError:
        pass


@SETTINGS
@given(json_values, json_values, json_values)
def test_signature_file_parse_structured(env, sigs, certs):
    doc = {"mediaType": MEDIA_TYPE, "dsseEnvelope": {"payloadType": PAYLOAD_TYPE, "payload": env,
                                                     "signatures": sigs}, "certificates": certs}
    try:
        parse_signature(json.dumps(doc).encode())
    except ObeliskError:
        pass


@SETTINGS
@given(json_values, json_values)
def test_statement_parse(subject, predicate):
    doc = {"_type": "https://in-toto.io/Statement/v1", "predicateType": "https://obelisk.dev/attestations/report/v1",
           "subject": subject, "predicate": predicate}
    for data in (json.dumps(doc).encode(), base64.b64encode(json.dumps(doc).encode())):
        try:
            parse_statement(data)
        except ObeliskError:
            pass


@SETTINGS
@given(st.binary(max_size=4096) | st.builds(lambda v: json.dumps(v).encode(), json_values)
       | st.builds(lambda s: b'<html><script type="application/json" id="obelisk-report-meta">' + s
                   + b"</script>", st.binary(max_size=300)))
def test_describe_never_crashes(data):
    describe(data)
    describe(b'{"version": "2.1.0", "runs": ' + data + b"}")
    describe(b'{"schema": "obelisk.report/1", "subject": ' + data + b"}")


@SETTINGS
@given(st.binary(max_size=2048))
def test_xml_reference_loaders(tmp_path, data):
    from obelisk.reports.cci import load_cci_list
    from obelisk.reports.stig_benchmark import load_stig_benchmark

    for prefix in (b"", b'<Benchmark xmlns="http://checklists.nist.gov/xccdf/1.1">',
                   b'<cci_list xmlns="http://iase.disa.mil/cci"><cci_items>'):
        path = tmp_path / "in.xml"
        path.write_bytes(prefix + data)
        for loader in (load_stig_benchmark, load_cci_list):
            try:
                loader(path)
            except ObeliskError:
                pass


def test_entity_expansion_is_not_performed(tmp_path):
    from obelisk.reports.stig_benchmark import load_stig_benchmark

    bomb = (b'<?xml version="1.0"?><!DOCTYPE b [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
            b'<!ENTITY file SYSTEM "file:///etc/passwd">]>'
            b'<Benchmark xmlns="http://checklists.nist.gov/xccdf/1.1" id="x"><title>&b;&file;</title>'
            b'<Group id="V-1"><Rule id="SV-1r1_rule" severity="low"><title>&file;</title></Rule></Group></Benchmark>')
    path = tmp_path / "bomb.xml"
    path.write_bytes(bomb)
    try:
        bench = load_stig_benchmark(path)
    except ObeliskError:
        return
    assert "root:" not in bench.rules[0].title and "root:" not in bench.title
