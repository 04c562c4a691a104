"""STIG Viewer 3 checklist (.cklb JSON): the same entries as the CKL in Viewer 3's document layout."""

from __future__ import annotations

from obelisk.reports.checklist import (
    NOT_A_FINDING,
    NOT_APPLICABLE,
    NOT_REVIEWED,
    OPEN,
    Checklist,
    build_checklist,
    stable_uuid,
)
from obelisk.reports.model import Bundle
from obelisk.reports.options import RenderOptions, dump_json

STATUS = {NOT_A_FINDING: "not_a_finding", OPEN: "open", NOT_APPLICABLE: "not_applicable",
          NOT_REVIEWED: "not_reviewed"}


def render(bundle: Bundle, options: RenderOptions) -> bytes:
    checklist = build_checklist(bundle.report, options.stig_benchmark)
    return dump_json(to_json(checklist, bundle.report.generated_at), len(checklist.entries))


def to_json(checklist: Checklist, when: str) -> dict:
    su = checklist.stig_uuid
    rules = []
    for e in checklist.entries:
        rules.append({
            "uuid": stable_uuid(su, e.vuln_id),
            "stig_uuid": su,
            "target_key": None,
            "stig_ref": None,
            "group_id": e.vuln_id,
            "group_id_src": e.vuln_id,
            "rule_id": e.rule_id.removesuffix("_rule"),
            "rule_id_src": e.rule_id,
            "weight": e.weight,
            "classification": "Unclassified",
            "severity": e.severity,
            "rule_version": e.version,
            "group_title": e.group_title,
            "rule_title": e.title,
            "fix_text": e.fix,
            "false_positives": "",
            "false_negatives": "",
            "discussion": e.discussion,
            "check_content": e.check,
            "documentable": "false",
            "mitigations": "",
            "potential_impacts": "",
            "third_party_tools": "",
            "mitigation_control": "",
            "responsibility": "",
            "security_override_guidance": "",
            "ia_controls": "",
            "check_content_ref": {"href": checklist.filename, "name": e.check_ref},
            "legacy_ids": list(e.legacy_ids),
            "ccis": list(e.ccis),
            "group_tree": [{"id": e.vuln_id, "title": e.group_title,
                            "description": "<GroupDescription></GroupDescription>"}],
            "createdAt": when,
            "updatedAt": when,
            "STIGUuid": su,
            "status": STATUS[e.status],
            "overrides": {},
            "comments": e.comments,
            "finding_details": e.finding_details,
        })
    return {
        "title": f"{checklist.host_name} - {checklist.title}",
        "id": stable_uuid(su, "cklb"),
        "active": False,
        "mode": 1,
        "has_path": True,
        "target_data": {
            "target_type": "Computing",
            "host_name": checklist.host_name,
            "ip_address": "",
            "mac_address": "",
            "fqdn": checklist.fqdn,
            "comments": checklist.target_comment,
            "role": "None",
            "is_web_database": False,
            "technology_area": "",
            "web_db_site": "",
            "web_db_instance": "",
        },
        "stigs": [{
            "stig_name": checklist.title,
            "display_name": checklist.title.replace(" Security Technical Implementation Guide", " STIG"),
            "stig_id": checklist.stig_id,
            "release_info": checklist.release_info,
            "version": checklist.version,
            "uuid": su,
            "reference_identifier": "",
            "size": len(rules),
            "rules": rules,
        }],
        "cklb_version": "1.0",
    }
