"""STIG Viewer 2 checklist (.ckl XML), valid against DISA's U_Checklist_Schema_V2.xsd."""

from __future__ import annotations

from obelisk.reports.checklist import Checklist, build_checklist
from obelisk.reports.model import Bundle
from obelisk.reports.options import RenderOptions
from obelisk.reports.xmlsafe import xml_text


def render(bundle: Bundle, options: RenderOptions) -> bytes:
    return serialize(build_checklist(bundle.report, options.stig_benchmark))


def serialize(checklist: Checklist) -> bytes:
    from lxml import etree

    root = etree.Element("CHECKLIST")
    asset = etree.SubElement(root, "ASSET")
    for tag, value in (("ROLE", "None"), ("ASSET_TYPE", "Computing"), ("MARKING", "CUI"),
                       ("HOST_NAME", checklist.host_name), ("HOST_IP", ""), ("HOST_MAC", ""),
                       ("HOST_FQDN", checklist.fqdn), ("TARGET_COMMENT", checklist.target_comment),
                       ("TECH_AREA", ""), ("TARGET_KEY", ""), ("WEB_OR_DATABASE", "false"),
                       ("WEB_DB_SITE", ""), ("WEB_DB_INSTANCE", "")):
        etree.SubElement(asset, tag).text = xml_text(value)
    istig = etree.SubElement(etree.SubElement(root, "STIGS"), "iSTIG")
    info = etree.SubElement(istig, "STIG_INFO")
    for name, value in (("version", checklist.version), ("classification", "UNCLASSIFIED"),
                        ("customname", ""), ("stigid", checklist.stig_id), ("description", ""),
                        ("filename", checklist.filename), ("releaseinfo", checklist.release_info),
                        ("title", checklist.title), ("uuid", checklist.stig_uuid), ("notice", "terms-of-use"),
                        ("source", "STIG.DOD.MIL")):
        si = etree.SubElement(info, "SI_DATA")
        etree.SubElement(si, "SID_NAME").text = name
        if value:
            etree.SubElement(si, "SID_DATA").text = xml_text(value)
    stig_ref = f"{checklist.title} :: Version {checklist.version}, {checklist.release_info}".rstrip(", ")
    for e in checklist.entries:
        vuln = etree.SubElement(istig, "VULN")
        attrs = [("Vuln_Num", e.vuln_id), ("Severity", e.severity), ("Group_Title", e.group_title),
                 ("Rule_ID", e.rule_id), ("Rule_Ver", e.version), ("Rule_Title", e.title),
                 ("Vuln_Discuss", e.discussion), ("IA_Controls", ""), ("Check_Content", e.check),
                 ("Fix_Text", e.fix), ("False_Positives", ""), ("False_Negatives", ""),
                 ("Documentable", "false"), ("Mitigations", ""), ("Potential_Impact", ""),
                 ("Third_Party_Tools", ""), ("Mitigation_Control", ""), ("Responsibility", ""),
                 ("Security_Override_Guidance", ""), ("Check_Content_Ref", e.check_ref), ("Weight", e.weight),
                 ("Class", "Unclass"), ("STIGRef", stig_ref), ("TargetKey", ""), ("STIG_UUID", checklist.stig_uuid),
                 *[("LEGACY_ID", legacy) for legacy in e.legacy_ids],
                 *[("CCI_REF", cci) for cci in e.ccis]]
        for name, value in attrs:
            sd = etree.SubElement(vuln, "STIG_DATA")
            etree.SubElement(sd, "VULN_ATTRIBUTE").text = name
            etree.SubElement(sd, "ATTRIBUTE_DATA").text = xml_text(value)
        etree.SubElement(vuln, "STATUS").text = e.status
        etree.SubElement(vuln, "FINDING_DETAILS").text = xml_text(e.finding_details)
        etree.SubElement(vuln, "COMMENTS").text = xml_text(e.comments)
        etree.SubElement(vuln, "SEVERITY_OVERRIDE").text = ""
        etree.SubElement(vuln, "SEVERITY_JUSTIFICATION").text = ""
    body = etree.tostring(root, encoding="UTF-8", xml_declaration=True, pretty_print=True)
    return body


