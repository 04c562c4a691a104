"""Realistic results files for report tests: every status, CIS and STIG references, several
commands (CIS/STIG scan, kernel, IMA, attestation) for one node. Titles are our own words."""

from __future__ import annotations

import datetime as dt

from obelisk.core import findings as report_format
from obelisk.core.findings import Evidence, Finding, Reference, Report, Severity, Status, Subject, Waiver

NODE = Subject(kind="node", name="worker-01.prod.example", digest="sha256:" + "ab" * 32,
               attributes=(("fqdn", "worker-01.prod.example"), ("image", "obelisk-node 1.4.2"),
                           ("kernel", "6.1.0-obelisk")))


def _stig(vid: str, rule: str, version: str, cci: str, nist: str) -> tuple[Reference, ...]:
    return (Reference("stig", vid), Reference("stig-rule", rule), Reference("stig-version", version),
            Reference("cci", cci), Reference("nist-800-53", nist))


def cis_stig_findings() -> tuple[Finding, ...]:
    manifest = "/etc/kubernetes/manifests/kube-apiserver.yaml"
    return (
        Finding(
            id="cis-1.2.7", title="API server authorizes with Node and RBAC", status=Status.PASS,
            severity=Severity.MEDIUM, target="kube-apiserver", observed="Node,RBAC", expected="Node,RBAC",
            evidence=(Evidence("flag", "pid 812 kube-apiserver", "--authorization-mode=Node,RBAC"),),
            remediation="Set --authorization-mode=Node,RBAC in the API server manifest.",
            references=(Reference("cis", "1.2.7"),
                        *_stig("V-242382", "SV-242382r879530_rule", "CNTR-K8-000270", "CCI-000213", "AC-3")),
            benchmark="cis-1.12", section="control-plane", detail="flag set as required"),
        Finding(
            id="stig-V-242381", title="Controller manager uses one credential per controller",
            status=Status.FAIL, severity=Severity.HIGH, target="kube-controller-manager",
            observed="false", expected="true",
            evidence=(Evidence("file", "/etc/kubernetes/manifests/kube-controller-manager.yaml",
                               "- --use-service-account-credentials=false", "23"),),
            remediation="Set --use-service-account-credentials=true in the controller manager manifest.",
            references=(*_stig("V-242381", "SV-242381r879522_rule", "CNTR-K8-000220", "CCI-000015", "AC-2(1)"),),
            benchmark="stig-k8s", section="control-plane",
            detail="the flag is explicitly disabled <script>alert(1)</script>"),
        Finding(
            id="cis-1.2.16", title="API server audit log path is set", status=Status.WAIVED,
            severity=Severity.MEDIUM, target="kube-apiserver", observed=None, expected="/var/log/kube/audit.log",
            evidence=(Evidence("file", manifest, "no --audit-log-path flag", ""),),
            remediation="Set --audit-log-path to a persistent location.",
            references=(Reference("cis", "1.2.16"),
                        *_stig("V-242402", "SV-242402r879559_rule", "CNTR-K8-000700", "CCI-000172", "AU-12")),
            benchmark="cis-1.12", section="control-plane", detail="flag absent",
            waiver=Waiver("cis-1.2.16", "Audit shipped by the node agent to the SIEM (ticket SEC-1142)",
                          "J. Rivera (CISO office)", dt.date(2027, 3, 31))),
        Finding(
            id="cis-2.1", title="etcd serves clients over TLS", status=Status.ERROR,
            severity=Severity.HIGH, target="etcd", evidence=(Evidence("file", "/etc/kubernetes/manifests/etcd.yaml",
                                                                      "permission denied", ""),),
            remediation="Set --cert-file and --key-file for etcd.",
            references=(Reference("cis", "2.1"),
                        *_stig("V-242379", "SV-242379r879519_rule", "CNTR-K8-000180", "CCI-000068", "AC-17(2)")),
            benchmark="cis-1.12", section="etcd", detail="manifest unreadable: permission denied"),
        Finding(
            id="cis-4.2.1", title="Kubelet refuses anonymous requests", status=Status.PASS,
            severity=Severity.HIGH, target="kubelet", observed="false", expected="false",
            evidence=(Evidence("config", "/var/lib/kubelet/config.yaml", "authentication.anonymous.enabled: false",
                               "7"),),
            references=(Reference("cis", "4.2.1"),
                        *_stig("V-245541", "SV-245541r918193_rule", "CNTR-K8-001300", "CCI-000213", "AC-3")),
            benchmark="cis-1.12", section="worker"),
        Finding(
            id="cis-5.1.1", title="cluster-admin is bound only where needed", status=Status.MANUAL,
            severity=Severity.MEDIUM, target="cluster", remediation="Review ClusterRoleBindings to cluster-admin.",
            references=(Reference("cis", "5.1.1"), Reference("nist-800-53", "AC-6")),
            benchmark="cis-1.12", section="policies", detail="needs a person with cluster access"),
        Finding(
            id="cis-1.1.9", title="CNI files are mode 600 or stricter", status=Status.SKIP,
            severity=Severity.LOW, target="/etc/cni/net.d", references=(Reference("cis", "1.1.9"),),
            benchmark="cis-1.12", section="control-plane", detail="no CNI configuration on this node"),
        Finding(
            id="stig-V-242387", title="Kubelet read-only port is off", status=Status.FAIL,
            severity=Severity.HIGH, target="kubelet", observed="10255", expected="0",
            evidence=(Evidence("config", "/var/lib/kubelet/config.yaml", "readOnlyPort: 10255", "31"),),
            remediation="Set readOnlyPort: 0 in the kubelet configuration.",
            references=(*_stig("V-242387", "SV-242387r879530_rule", "CNTR-K8-000330", "CCI-000213", "AC-3"),),
            benchmark="stig-k8s", section="worker"),
    )


def cis_report() -> Report:
    return Report(findings=cis_stig_findings(), subject=NODE, tool_version="0.1.0",
                  generated_at="2026-11-24T04:10:00Z", command="cis scan")


def kernel_report() -> Report:
    kernel = Subject(kind="kernel", name="6.1.0-obelisk", digest="sha256:" + "cd" * 32)
    return Report(findings=(
        Finding(id="kernel.kconfig.CONFIG_MODULES", title="Loadable modules disabled", status=Status.PASS,
                severity=Severity.HIGH, target="/boot/config-6.1.0-obelisk", observed="n", expected="n",
                references=(Reference("kspp", "CONFIG_MODULES"), Reference("nist-800-53", "CM-7")),
                benchmark="kernel-hardening", section="kconfig"),
        Finding(id="kernel.sysctl.kernel.kptr_restrict", title="Kernel pointers hidden", status=Status.FAIL,
                severity=Severity.MEDIUM, target="/proc/sys/kernel/kptr_restrict", observed="1", expected="2",
                evidence=(Evidence("file", "/proc/sys/kernel/kptr_restrict", "1"),),
                remediation="Set kernel.kptr_restrict=2 in the image's sysctl profile.",
                references=(Reference("kspp", "kptr_restrict"), Reference("nist-800-53", "SI-16")),
                benchmark="kernel-hardening", section="sysctl"),
    ), subject=kernel, tool_version="0.1.0", generated_at="2026-11-24T04:05:00Z", command="kernel check")


def attestation_report() -> Report:
    return Report(findings=(
        Finding(id="attest.pcr.10", title="IMA log replays to the quoted PCR 10", status=Status.PASS,
                severity=Severity.CRITICAL, target="tpm", observed="sha256:9f1c…", expected="sha256:9f1c…",
                evidence=(Evidence("quote", "tpm2 quote nonce 5e0d", "pcr10=9f1c", "entry 412"),),
                references=(Reference("nist-800-53", "SI-7(6)"),), benchmark="attestation", section="tpm"),
        Finding(id="ima.entry.17", title="Measured file matches the build manifest", status=Status.FAIL,
                severity=Severity.CRITICAL, target="/usr/bin/kubelet", observed="sha256:" + "11" * 32,
                expected="sha256:" + "22" * 32,
                evidence=(Evidence("log-entry", "/sys/kernel/security/ima/ascii_runtime_measurements",
                                   "10 ... ima-ng sha256:1111... /usr/bin/kubelet", "17"),),
                remediation="Rebuild the node from the signed image; investigate the change.",
                references=(Reference("nist-800-53", "SI-7"),), benchmark="ima", section="runtime"),
    ), subject=NODE, tool_version="0.1.0", generated_at="2026-11-24T04:12:30Z", command="attest verify")


def write_all(directory) -> list:
    paths = []
    for name, rep in (("cis.json", cis_report()), ("kernel.json", kernel_report()),
                      ("attest.json", attestation_report())):
        p = directory / name
        p.write_text(report_format.serialize(rep))
        paths.append(p)
    return paths


def synthetic_report(n: int) -> Report:
    """n findings cycling through every status and severity (benchmarks of scale)."""
    base = cis_stig_findings()
    statuses = list(Status)
    severities = list(Severity)
    out = []
    from dataclasses import replace
    for i in range(n):
        f = base[i % len(base)]
        status = statuses[i % len(statuses)]
        out.append(replace(f, id=f"{f.id}.{i}", status=status, severity=severities[(i // 7) % len(severities)],
                           waiver=f.waiver if status is Status.WAIVED else None))
    return Report(findings=tuple(out), subject=NODE, tool_version="0.1.0", generated_at="2026-11-24T04:10:00Z",
                  command="cis scan")
