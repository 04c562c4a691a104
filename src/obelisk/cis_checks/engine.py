"""The generic check engine: interprets a check's `test` (data) against a NodeView.

Test kinds (each a few lines below): flag, kubelet, file, cert, all, audit_policy,
encryption_config, pod_security_config, pod_security_gate, feature_gate_off, static_pods,
service_disabled, process_absent, removed_feature, distinct_ca, and for the container runtime
containerd_config, runtime_fact, containers_confined. Each kind declares its parameters
as a frozen dataclass (a `Spec` subclass) registered with its evaluator; `parse_test` turns a
catalogue's `test` mapping into that record, refusing unknown kinds, unknown or missing keys and
values of the wrong type. An evaluator returns an `Outcome`; scan.py turns outcomes into core Findings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from obelisk.cis_checks.compare import OPS, check_value, compare, describe, split_items
from obelisk.cis_checks.kubelet import KubeletConfig, Setting, _show
from obelisk.cis_checks.node import CONTROL_PLANE, Component, NodeView
from obelisk.cis_checks.runtime import FACTS, RuntimeView, parse_key, show
from obelisk.cis_checks.testspec import SPECS, Scalar, Spec, choices
from obelisk.cis_checks.testspec import parse_test as parse_test  # with every kind registered (below)
from obelisk.core.errors import InputError
from obelisk.core.findings import Evidence, Status


@dataclass(frozen=True)
class Outcome:
    status: Status
    observed: str | None = None
    expected: str | None = None
    evidence: tuple[Evidence, ...] = ()
    detail: str = ""
    target: str = ""


class Context:
    """Per-scan state shared by evaluators: the node and lazily built kubelet view."""

    def __init__(self, node: NodeView):
        self.node = node
        self._kubelet: KubeletConfig | None = None
        self._runtime: RuntimeView | None = None

    @property
    def runtime(self) -> RuntimeView:
        if self._runtime is None:
            self._runtime = RuntimeView(self.node, self.node.sys)
        return self._runtime

    @property
    def kubelet(self) -> KubeletConfig | None:
        comp = self.node.components.get("kubelet")
        if comp is None:
            return None
        if self._kubelet is None:
            self._kubelet = KubeletConfig(self.node, comp)
        return self._kubelet


# ------------------------------------------------------------------ evaluators

Evaluator = Callable[[Context, Any], Outcome]
EVALUATORS: dict[str, Evaluator] = {}


def evaluator(kind: str, spec: type[Spec] = Spec) -> Callable[[Evaluator], Evaluator]:
    """Register the evaluator of `kind` and the record of its parameters (default: none)."""
    def register(fn: Evaluator) -> Evaluator:
        EVALUATORS[kind] = fn
        SPECS[kind] = spec
        return fn
    return register


def evaluate(ctx: Context, test: Spec) -> Outcome:
    fn = EVALUATORS.get(test.kind)
    if fn is None:
        raise InputError(f"unknown test kind {test.kind!r}")
    return fn(ctx, test)


# ------------------------------------------------------------------ flags

@dataclass(frozen=True)
class FlagSpec(Spec):
    component: str
    flag: str
    op: str = field(default="set", metadata=choices(*OPS))
    value: Scalar | tuple[Scalar, ...] | None = None
    default: Scalar | None = None  # the component's default when the flag is not given
    config_key: str | None = None  # the same setting in the component's --config file
    config_wins: bool = False  # the --config file replaces flags (kube-proxy, kube-scheduler)
    require_set: bool = False  # the default is not enough: the flag must be given

    def __post_init__(self) -> None:
        check_value(self.op, self.value)


@evaluator("flag", FlagSpec)
def _flag(ctx: Context, test: FlagSpec) -> Outcome:
    comp = ctx.node.components.get(test.component)
    if comp is None:
        return Outcome(Status.SKIP, detail=f"{test.component} does not run on this node")
    if comp.config_error:
        return Outcome(Status.ERROR, detail=comp.config_error,
                       evidence=(Evidence("file", comp.config_error.split(": ", 1)[0], comp.config_error),),
                       target=comp.name)
    name = test.flag
    op = test.op
    expected = describe(op, test.value)
    default = test.default
    key = test.config_key
    if key and comp.flag("config"):
        # the component's own --config file: with config_wins (kube-proxy, kube-scheduler) the flag is
        # ignored once a config file is given; otherwise flags win and the file fills in
        flag_value = comp.flag(name)
        if test.config_wins or flag_value is None:
            found = _component_config_value(ctx, comp, key)
            if isinstance(found, Outcome):
                return found
            path = comp.host_path(comp.flag("config") or "")
            detail = ""
            if flag_value is not None:
                detail = f"{comp.cmdline.show(name)} is ignored because --config is given"
            if found is not None:
                cfg_value = found[1]
                ok = compare(op, cfg_value, test.value)
                return Outcome(Status.PASS if ok else Status.FAIL, cfg_value, expected,
                               (Evidence("config", path, f"{key}={cfg_value}"),), detail, comp.name)
            if test.config_wins:
                effective = str(default) if default is not None else None
                ok = compare(op, effective, test.value)
                observed = f"not set (default {default})" if default not in (None, "") else "not set"
                return Outcome(Status.PASS if ok else Status.FAIL, observed, expected,
                               (Evidence("config", path, f"{key} not set"),), detail, comp.name)
    value = comp.flag(name)
    kind, source, shown = comp.flag_evidence(name)
    evidence = (Evidence(kind, source, shown),)
    if value is None and test.require_set:
        return Outcome(Status.FAIL, "not set", f"{expected} (set explicitly)", evidence, target=comp.name)
    effective = value if value is not None else (str(default) if default is not None else None)
    ok = compare(op, effective, test.value)
    if value is not None:
        observed = value
    elif default is not None:
        observed = f"not set (default {default})" if default != "" else "not set"
    else:
        observed = "not set"
    return Outcome(Status.PASS if ok else Status.FAIL, observed, expected, evidence, target=comp.name)


def _component_config_value(ctx: Context, comp: Component, key: str) -> Outcome | tuple[str, str] | None:
    """(path, value) of `key` in a component's --config file; None when unset; an error Outcome when unusable."""
    config = comp.flag("config")
    if config is None:
        raise AssertionError(f"{comp.name}: config value asked for, but there is no --config flag")
    path = comp.host_path(config)
    before = len(ctx.node.problems)
    doc = ctx.node.load_yaml_file(path)
    if len(ctx.node.problems) > before:
        msg = ctx.node.problems[before].message
        del ctx.node.problems[before:]
        return Outcome(Status.ERROR, detail=f"{path}: {msg}", evidence=(Evidence("file", path, msg),), target=path)
    if not isinstance(doc, dict):
        return Outcome(Status.ERROR, detail=f"{path}: expected a configuration mapping",
                       evidence=(Evidence("file", path, "not a mapping"),), target=path)
    cur: Any = doc
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return path, _show(cur)


# ------------------------------------------------------------------ kubelet configuration

def _kubelet_error(ctx: Context) -> Outcome | None:
    kc = ctx.kubelet
    if kc is None:
        return Outcome(Status.SKIP, detail="kubelet does not run on this node")
    if kc.errors:
        paths = ", ".join(p for p, _ in kc.errors)
        detail = "; ".join(f"{p}: {m}" for p, m in kc.errors)
        return Outcome(Status.ERROR, detail=f"kubelet configuration unusable: {detail}",
                       evidence=tuple(Evidence("file", p, m) for p, m in kc.errors), target=paths)
    return None


def _setting_evidence(s: Setting) -> tuple[Evidence, ...]:
    detail = f"{s.key}={_show(s.value)}" if s.value is not None else f"{s.key} not set"
    ev = [Evidence("config", s.source, detail)]
    ev.extend(Evidence("config", o.rsplit(" in ", 1)[-1], f"overridden: {o.rsplit(' in ', 1)[0]}")
              for o in s.overridden)
    return tuple(ev)


@dataclass(frozen=True)
class KubeletSpec(Spec):
    key: str  # dotted KubeletConfiguration key: "authentication.anonymous.enabled"
    op: str = field(default="set", metadata=choices(*OPS))
    value: Scalar | tuple[Scalar, ...] | None = None
    require_set: bool = False

    def __post_init__(self) -> None:
        check_value(self.op, self.value)


@evaluator("kubelet", KubeletSpec)
def _kubelet(ctx: Context, test: KubeletSpec) -> Outcome:
    err = _kubelet_error(ctx)
    if err is not None:
        return err
    assert ctx.kubelet is not None
    s = ctx.kubelet.get(test.key)
    op = test.op
    expected = describe(op, test.value)
    observed = None if s.value is None else _show(s.value)
    if test.require_set and not s.is_set:
        return Outcome(Status.FAIL, f"not set (default {observed})" if observed is not None else "not set",
                       f"{expected} (set explicitly)", _setting_evidence(s), target="kubelet")
    ok = compare(op, observed, test.value)
    shown = observed if observed is not None else "not set"
    if s.source == "default" and observed is not None:
        shown = f"{observed} (default)"
    detail = s.note
    if s.overridden:
        detail = (detail + "; " if detail else "") + f"{s.source} overrides " + "; ".join(s.overridden)
    return Outcome(Status.PASS if ok else Status.FAIL, shown, expected, _setting_evidence(s), detail, "kubelet")


# ------------------------------------------------------------------ files

FILE_SELECTORS = ("manifest", "kubeconfig", "kubelet", "etcd", "cni", "path", "tree", "glob")


def _select_files(ctx: Context, selector: str) -> tuple[list[str], str]:
    """Node paths named by a selector, and why the list is empty when it is."""
    node = ctx.node
    kind, _, arg = selector.partition(":")
    if kind == "manifest":
        comp = node.components.get(arg)
        if comp is not None and comp.manifest:
            return [comp.manifest], ""
        paths = [p for p, c in node.manifests.items() if c == arg]
        return paths, f"{arg} has no static pod manifest"
    if kind == "kubeconfig":
        comp = node.components.get(arg)
        value = comp.flag("kubeconfig") if comp else None
        if comp is not None and value is None and comp.flag("config"):
            found = _component_config_value(ctx, comp, "clientConnection.kubeconfig")
            value = found[1] if isinstance(found, tuple) else None
        return ([comp.host_path(value)] if comp and value else []), f"{arg} has no kubeconfig"
    if kind == "kubelet":
        comp = node.components.get("kubelet")
        if comp is None:
            return [], "kubelet does not run on this node"
        kc = ctx.kubelet
        if arg == "unit":
            from obelisk.cis_checks.cmdline import find_unit_files

            units = comp.unit_files or tuple(node.node_path(f) for f in find_unit_files(node.root, "kubelet.service"))
            return list(units), "no kubelet.service unit"
        if arg == "config":
            assert kc is not None
            files = ([kc.config_file] if kc.config_file else []) + kc.files
            return list(dict.fromkeys(files)), "kubelet runs without a --config file"
        if arg == "kubeconfig":
            value = comp.flag("kubeconfig")
            return ([value] if value else []), "kubelet has no --kubeconfig"
        if arg == "client-ca":
            assert kc is not None
            value = kc.get("authentication.x509.clientCAFile").value
            return ([value] if value else []), "kubelet has no client CA file"
    if kind == "etcd":
        comp = node.components.get("etcd")
        if comp is None:
            return [], "etcd does not run on this node"
        data_dir = comp.host_path(comp.flag("data-dir") or "/var/lib/etcd")
        if arg == "data-dir":
            return [data_dir], ""
        if arg == "data-files":
            return [p for p in node.walk(data_dir) if not node.file_info(p).is_dir], "etcd data directory is empty"
    if kind == "cni":
        comp = node.components.get("kubelet")
        conf_dir = (comp.flag("cni-conf-dir") if comp else None) or "/etc/cni/net.d"
        files = [p for d in (conf_dir, "/var/lib/cni/networks") for p in node.walk(d)[1:]]
        return [p for p in files if not node.file_info(p).is_dir], "no CNI configuration files"
    if kind == "path":
        return ["/" + p.strip().lstrip("/") for p in arg.split(",") if p.strip()], ""
    if kind == "tree":
        return node.walk("/" + arg.lstrip("/")), f"/{arg.lstrip('/')} does not exist"
    if kind == "glob":
        return node.glob(arg), f"nothing matches /{arg.lstrip('/')}"
    raise InputError(f"unknown file selector {selector!r}")


def _mode_ok(mode: int, limit: int) -> bool:
    return mode & ~limit & 0o7777 == 0


@dataclass(frozen=True)
class FileSpec(Spec):
    file: str  # a selector: "manifest:kube-apiserver", "kubelet:config", "glob:etc/kubernetes/pki/*.crt", ...
    mode: str | None = None  # octal, the loosest mode allowed: "600"
    owner: str | None = None  # "root:root"
    missing: str = field(default="fail", metadata=choices("fail", "pass", "skip"))  # when no file exists

    def __post_init__(self) -> None:
        if self.file.partition(":")[0] not in FILE_SELECTORS:
            raise ValueError(f"file: {self.file!r} does not start with one of "
                             + ", ".join(f"{s}:" for s in FILE_SELECTORS))
        if self.mode is not None and not re.fullmatch(r"[0-7]{3,4}", self.mode):
            raise ValueError(f"mode: {self.mode!r} is not an octal mode")


@evaluator("file", FileSpec)
def _file(ctx: Context, test: FileSpec) -> Outcome:
    paths, why_empty = _select_files(ctx, test.file)
    missing = test.missing
    mode_limit = int(test.mode, 8) if test.mode is not None else None
    owner = test.owner
    expected = ", ".join(x for x in (f"mode {test.mode} or stricter" if mode_limit is not None else "",
                                     f"owner {owner}" if owner else "") if x)
    if not paths:
        return Outcome(Status.SKIP, expected=expected, detail=why_empty)
    evidence: list[Evidence] = []
    bad: list[str] = []
    errors: list[str] = []
    absent: list[str] = []
    for p in paths:
        info = ctx.node.file_info(p)
        if info.error:
            errors.append(f"{p}: {info.error}")
            evidence.append(Evidence("file", p, info.error))
            continue
        if not info.exists and p in ctx.node.tmpfiles:
            info, declared_in = ctx.node.tmpfiles[p]  # created at boot on an empty /var
            evidence.append(Evidence("file", declared_in,
                                     f"{p} created at boot: mode {info.mode:04o} owner {info.owner_text}"))
            if mode_limit is not None and not _mode_ok(info.mode, mode_limit):
                bad.append(f"{p} mode {info.mode:o}")
            if owner and info.owner_text != owner:
                bad.append(f"{p} owner {info.owner_text}")
            continue
        if not info.exists:
            absent.append(p)
            evidence.append(Evidence("file", p, "absent"))
            continue
        evidence.append(Evidence("file", p, f"mode {info.mode:04o} owner {info.owner_text}"))
        if mode_limit is not None and not _mode_ok(info.mode, mode_limit):
            bad.append(f"{p} mode {info.mode:o}")
        if owner and info.owner_text != owner:
            bad.append(f"{p} owner {info.owner_text}")
        if mode_limit is not None:
            for parent in ctx.node.parents(p):
                if parent.exists and parent.mode & 0o022 and not parent.mode & 0o1000:
                    bad.append(f"{parent.path} (parent) mode {parent.mode:o} is group/world-writable")
                    evidence.append(Evidence("file", parent.path, f"mode {parent.mode:04o} owner {parent.owner_text}"))
    target = paths[0] if len(paths) == 1 else f"{len(paths)} files"
    if errors:
        return Outcome(Status.ERROR, detail="; ".join(errors), evidence=tuple(evidence), target=target)
    if absent and missing == "fail":
        bad.extend(f"{p} absent" for p in absent)
    if bad:
        observed = "; ".join(bad) if len(paths) > 1 or absent else bad[0].split(" ", 1)[1]
        return Outcome(Status.FAIL, observed, expected, tuple(evidence), target=target)
    if absent and len(absent) == len(paths):
        status = Status.PASS if missing == "pass" else Status.SKIP
        return Outcome(status, "absent", expected, tuple(evidence), detail="not present on this node", target=target)
    present = [e for e in evidence if e.detail != "absent"]
    observed = present[0].detail if len(present) == 1 else f"{len(present)} files within limits"
    return Outcome(Status.PASS, observed, expected, tuple(evidence), target=target)


# ------------------------------------------------------------------ certificates

MIN_KEY_BITS = {"RSA": 2048, "EC": 256, "Ed25519": 256, "Ed448": 448}


@dataclass(frozen=True)
class CertSpec(Spec):
    component: str
    flags: tuple[str, ...]  # flags naming certificate files


@evaluator("cert", CertSpec)
def _cert(ctx: Context, test: CertSpec) -> Outcome:
    comp = ctx.node.components.get(test.component)
    if comp is None:
        return Outcome(Status.SKIP, detail=f"{test.component} does not run on this node")
    evidence, bad, present = [], [], 0
    for flag in test.flags:
        value = comp.flag(flag)
        if not value:
            continue
        path = comp.host_path(value)
        if not ctx.node.file_info(path).exists:
            evidence.append(Evidence("file", path, "absent (provisioned later)"))
            continue
        info = ctx.node.certificate(path)
        if info.error:
            return Outcome(Status.ERROR, detail=f"{path}: {info.error}", evidence=(Evidence("file", path, info.error),))
        present += 1
        evidence.append(Evidence("file", path, f"{info.key_type} {info.key_bits} bits, not after {info.not_after}"))
        family = info.key_type.split()[0]
        if info.key_bits < MIN_KEY_BITS.get(family, 10**6):
            bad.append(f"{path}: {info.key_type} {info.key_bits} bits")
        if info.expired:
            bad.append(f"{path}: expired {info.not_after}")
    expected = "RSA >= 2048 or EC >= 256 bits, not expired"
    if bad:
        return Outcome(Status.FAIL, "; ".join(bad), expected, tuple(evidence), target=comp.name)
    if not present:
        return Outcome(Status.SKIP, expected=expected, evidence=tuple(evidence),
                       detail="certificate files not present (provisioned when the node joins)")
    return Outcome(Status.PASS, evidence[-1].detail, expected, tuple(evidence), target=comp.name)


# ------------------------------------------------------------------ combinations

@dataclass(frozen=True)
class AllSpec(Spec):
    tests: tuple[Spec, ...]  # every one must pass

    def __post_init__(self) -> None:
        if not self.tests:
            raise ValueError("tests: at least one test")


@evaluator("all", AllSpec)
def _all(ctx: Context, test: AllSpec) -> Outcome:
    outcomes = [evaluate(ctx, t) for t in test.tests]
    evidence = tuple(e for o in outcomes for e in o.evidence)
    target = next((o.target for o in outcomes if o.target), "")
    for status in (Status.ERROR, Status.FAIL):
        hits = [o for o in outcomes if o.status is status]
        if hits:
            return Outcome(status, "; ".join(o.observed for o in hits if o.observed) or None,
                           "; ".join(o.expected for o in hits if o.expected) or None, evidence,
                           "; ".join(o.detail for o in hits if o.detail), target)
    if all(o.status is Status.SKIP for o in outcomes):
        return Outcome(Status.SKIP, detail="; ".join(dict.fromkeys(o.detail for o in outcomes if o.detail)),
                       evidence=evidence, target=target)
    passed = [o for o in outcomes if o.status is Status.PASS]
    return Outcome(Status.PASS, "; ".join(o.observed for o in passed if o.observed) or None,
                   "; ".join(o.expected for o in passed if o.expected) or None, evidence,
                   "; ".join(o.detail for o in outcomes if o.status is Status.SKIP and o.detail), target)


# ------------------------------------------------------------------ configuration files of the API server

def _apiserver_file(ctx: Context, flag: str, kind: str) -> tuple[Outcome | None, Any, str]:
    comp = ctx.node.components.get("kube-apiserver")
    if comp is None:
        return Outcome(Status.SKIP, detail="kube-apiserver does not run on this node"), None, ""
    value = comp.flag(flag)
    if not value:
        return Outcome(Status.FAIL, f"--{flag} not set", f"--{flag} naming a {kind} file",
                       (Evidence("flag", comp.source, f"--{flag} not set"),), target=comp.name), None, ""
    path = comp.host_path(value)
    info = ctx.node.file_info(path)
    if not info.exists and not info.error:
        return None, None, path
    problems_before = len(ctx.node.problems)
    doc = ctx.node.load_yaml_file(path)
    if doc is None:
        msg = ctx.node.problems[problems_before].message if len(ctx.node.problems) > problems_before else "empty"
        del ctx.node.problems[problems_before:]
        return Outcome(Status.ERROR, detail=f"{path}: {msg}", evidence=(Evidence("file", path, msg),),
                       target=path), None, path
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        got = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        return Outcome(Status.ERROR, detail=f"{path}: kind {got!r}, expected {kind!r}",
                       evidence=(Evidence("file", path, f"kind {got!r}"),), target=path), None, path
    return None, doc, path


_SELECTORS = ("users", "userGroups", "verbs", "resources", "namespaces", "nonResourceURLs")
_LEVELS = ("None", "Metadata", "Request", "RequestResponse")


@dataclass(frozen=True)
class AuditPolicySpec(Spec):
    # parses: any policy with rules; request-response-default: a catch-all RequestResponse rule, none at None
    require: str = field(default="request-response-default", metadata=choices("parses", "request-response-default"))


@evaluator("audit_policy", AuditPolicySpec)
def _audit_policy(ctx: Context, test: AuditPolicySpec) -> Outcome:
    early, doc, path = _apiserver_file(ctx, "audit-policy-file", "Policy")
    if early is not None:
        return early
    if doc is None:
        return Outcome(Status.FAIL, f"{path} absent", "an audit Policy file", (Evidence("file", path, "absent"),),
                       target=path)
    rules = doc.get("rules")
    if not isinstance(rules, list) or not rules or not all(isinstance(r, dict) for r in rules):
        return Outcome(Status.FAIL, "no rules", "a Policy with rules", (Evidence("file", path, "rules empty"),),
                       target=path)
    levels = [str(r.get("level")) for r in rules]
    ev = (Evidence("file", path, "levels: " + ", ".join(levels)),)
    if any(level not in _LEVELS for level in levels):
        return Outcome(Status.ERROR, detail=f"{path}: unknown audit level in {levels}", evidence=ev, target=path)
    if test.require == "parses":
        return Outcome(Status.PASS, f"{len(rules)} rules", "an audit Policy with rules", ev, target=path)
    last = rules[-1]
    catch_all = not any(last.get(k) for k in _SELECTORS)
    if "None" in levels:
        return Outcome(Status.FAIL, "a rule with level None", "no rule drops events", ev, target=path)
    if not catch_all or last.get("level") != "RequestResponse":
        return Outcome(Status.FAIL, f"last rule level {last.get('level')}" + ("" if catch_all else " with selectors"),
                       "catch-all rule at level RequestResponse", ev, target=path)
    return Outcome(Status.PASS, "catch-all RequestResponse", "catch-all rule at level RequestResponse", ev,
                   target=path)


STRONG_PROVIDERS = ("kms", "secretbox", "aescbc", "aesgcm")


@evaluator("encryption_config")
def _encryption(ctx: Context, test: Spec) -> Outcome:
    early, doc, path = _apiserver_file(ctx, "encryption-provider-config", "EncryptionConfiguration")
    if early is not None:
        return early
    if doc is None:
        return Outcome(Status.SKIP, "absent", "first provider for secrets: " + ", ".join(STRONG_PROVIDERS),
                       (Evidence("file", path, "absent"),),
                       "encryption configuration not provisioned yet: its key is generated on the node", path)
    for entry in doc.get("resources") or []:
        if not isinstance(entry, dict):
            continue
        res = [str(r) for r in entry.get("resources") or []]
        if not any(r in ("secrets", "*.*", "*.") for r in res):
            continue
        providers = entry.get("providers") or []
        first = next(iter(providers[0]), "") if providers and isinstance(providers[0], dict) else ""
        ev = (Evidence("file", path, f"resources {','.join(res)}: first provider {first or 'none'}"),)
        ok = first in STRONG_PROVIDERS
        return Outcome(Status.PASS if ok else Status.FAIL, first or "none",
                       "one of " + ", ".join(STRONG_PROVIDERS), ev, target=path)
    return Outcome(Status.FAIL, "secrets not covered", "an entry for secrets", (Evidence("file", path, ""),),
                   target=path)


def _version(ctx: Context) -> tuple[int, int] | None:
    return ctx.node.kubernetes_version


@evaluator("pod_security_config")
def _pod_security_config(ctx: Context, test: Spec) -> Outcome:
    early, doc, path = _apiserver_file(ctx, "admission-control-config-file", "AdmissionConfiguration")
    if early is not None:
        return early
    expected = "PodSecurity defaults enforce restricted or baseline"
    if doc is None:
        return Outcome(Status.FAIL, f"{path} absent", expected, (Evidence("file", path, "absent"),), target=path)
    for plugin in doc.get("plugins") or []:
        if not isinstance(plugin, dict) or plugin.get("name") != "PodSecurity":
            continue
        conf = plugin.get("configuration")
        source = path
        if conf is None and isinstance(plugin.get("path"), str):
            import posixpath

            source = posixpath.join(posixpath.dirname(path), plugin["path"])
            conf = ctx.node.load_yaml_file(source)
        if not isinstance(conf, dict) or conf.get("kind") != "PodSecurityConfiguration":
            return Outcome(Status.ERROR, detail=f"{source}: PodSecurity configuration missing or of the wrong kind",
                           evidence=(Evidence("file", source, ""),), target=source)
        enforce = str((conf.get("defaults") or {}).get("enforce", "privileged"))
        ev = (Evidence("file", source, f"defaults.enforce={enforce}"),)
        ok = enforce in ("restricted", "baseline")
        return Outcome(Status.PASS if ok else Status.FAIL, enforce, expected, ev, target=source)
    return Outcome(Status.FAIL, "no PodSecurity plugin configuration", expected, (Evidence("file", path, ""),),
                   target=path)


@evaluator("pod_security_gate")
def _pod_security_gate(ctx: Context, test: Spec) -> Outcome:
    comp = ctx.node.components.get("kube-apiserver")
    if comp is None:
        return Outcome(Status.SKIP, detail="kube-apiserver does not run on this node")
    version = _version(ctx)
    gates = split_items(comp.flag("feature-gates") or "")
    disabled = split_items(comp.flag("disable-admission-plugins") or "")
    ev = (Evidence("flag", comp.source,
                   f"{comp.cmdline.show('feature-gates')} {comp.cmdline.show('disable-admission-plugins')}"),)
    if version is not None and version < (1, 25):
        ok = "PodSecurity=true" in gates
        return Outcome(Status.PASS if ok else Status.FAIL, ",".join(gates) or "not set", "PodSecurity=true", ev,
                       target=comp.name)
    off = "PodSecurity=false" in gates or "PodSecurity" in disabled
    detail = ("Kubernetes 1.25+ (PodSecurity is GA; the feature gate was removed in 1.28, so setting it would stop the "
              "API server): checked that Pod Security admission is not disabled")
    return Outcome(Status.FAIL if off else Status.PASS, "disabled" if off else "enabled (GA)",
                   "Pod Security admission enabled", ev, detail, comp.name)


@dataclass(frozen=True)
class FeatureGateOffSpec(Spec):
    gate: str
    components: tuple[str, ...]


@evaluator("feature_gate_off", FeatureGateOffSpec)
def _feature_gate_off(ctx: Context, test: FeatureGateOffSpec) -> Outcome:
    gate = test.gate
    evidence: list[Evidence] = []
    on: list[str] = []
    present = False
    for name in test.components:
        comp = ctx.node.components.get(name)
        if comp is None:
            continue
        present = True
        if name == "kubelet" and ctx.kubelet is not None and not ctx.kubelet.errors:
            s = ctx.kubelet.get(f"featureGates.{gate}")
            evidence.extend(_setting_evidence(s))
            if s.value is True or _show(s.value).lower() == "true":
                on.append(f"kubelet ({s.source})")
            continue
        gates = split_items(comp.flag("feature-gates") or "")
        evidence.append(Evidence("flag", comp.source, comp.cmdline.show("feature-gates")))
        if f"{gate}=true" in gates:
            on.append(name)
    if not present:
        return Outcome(Status.SKIP, detail="no Kubernetes component runs on this node")
    if on:
        return Outcome(Status.FAIL, f"{gate}=true on " + ", ".join(on), f"{gate} not enabled", tuple(evidence))
    return Outcome(Status.PASS, f"{gate} not enabled", f"{gate} not enabled", tuple(evidence))


@evaluator("static_pods")
def _static_pods(ctx: Context, test: Spec) -> Outcome:
    err = _kubelet_error(ctx)
    if err is not None:
        return err
    assert ctx.kubelet is not None
    s = ctx.kubelet.get("staticPodPath")
    ev = _setting_evidence(s)
    if not s.value:
        return Outcome(Status.PASS, "staticPodPath not set", "no static pods on workers", ev, target="kubelet")
    directory = str(s.value)
    files = [p for p in ctx.node.walk(directory)[1:] if not ctx.node.file_info(p).is_dir]
    allowed = {*CONTROL_PLANE, "etcd"}
    owners = {p: ctx.node.manifests.get(p, "") for p in files}
    control_plane = [p for p, c in owners.items() if c in allowed]
    others = [p for p, c in owners.items() if c not in allowed]
    ev = ev + tuple(Evidence("file", p, owners[p] or "not a control-plane component") for p in files)
    if not control_plane:
        return Outcome(Status.FAIL, f"staticPodPath={directory}", "staticPodPath not set on a worker node", ev,
                       target="kubelet")
    if others:
        return Outcome(Status.FAIL, "non-control-plane static pods: " + ", ".join(others),
                       "only control-plane component manifests", ev, target="kubelet")
    return Outcome(Status.PASS, f"staticPodPath={directory} holds only control-plane components",
                   "static pods only for the control plane", ev,
                   "control-plane node: the control plane itself runs as static pods (see docs)", "kubelet")


@dataclass(frozen=True)
class ServiceDisabledSpec(Spec):
    units: tuple[str, ...]  # systemd unit names


@evaluator("service_disabled", ServiceDisabledSpec)
def _service_disabled(ctx: Context, test: ServiceDisabledSpec) -> Outcome:
    enabled: list[str] = []
    evidence: list[Evidence] = []
    for rel in ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"):
        base = ctx.node.root / rel
        if not base.is_dir():
            continue
        for wants in sorted(base.glob("*.wants")) + sorted(base.glob("*.requires")):
            for unit in test.units:
                link = wants / unit
                if link.exists() or link.is_symlink():
                    enabled.append(ctx.node.node_path(link))
    for unit in test.units:
        masked = ctx.node.root / "etc/systemd/system" / unit
        if masked.is_symlink() and str(masked.readlink()) == "/dev/null":
            evidence.append(Evidence("file", ctx.node.node_path(masked), "masked"))
    evidence.extend(Evidence("file", p, "enabled") for p in enabled)
    if enabled:
        return Outcome(Status.FAIL, "enabled: " + ", ".join(enabled), "no SSH unit enabled", tuple(evidence))
    return Outcome(Status.PASS, "not enabled", "no SSH unit enabled", tuple(evidence))


@dataclass(frozen=True)
class ProcessAbsentSpec(Spec):
    names: tuple[str, ...]  # process names that must not run


@evaluator("process_absent", ProcessAbsentSpec)
def _process_absent(ctx: Context, test: ProcessAbsentSpec) -> Outcome:
    if ctx.node.proc is None:
        return Outcome(Status.SKIP, detail="running processes are not visible when scanning a root directory")
    running = sorted({n for n in ctx.node.process_names if n in test.names})
    ev = (Evidence("process", str(ctx.node.proc), "running: " + (", ".join(running) or "none")),)
    if running:
        return Outcome(Status.FAIL, "running: " + ", ".join(running), "not running", ev)
    return Outcome(Status.PASS, "not running", "not running", ev)


@dataclass(frozen=True)
class RemovedFeatureSpec(Spec):
    since: str  # the Kubernetes version that removed it: "1.25"
    replaced_by: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\d+\.\d+", self.since):
            raise ValueError(f"since: {self.since!r} is not a Kubernetes version such as \"1.25\"")


@evaluator("removed_feature", RemovedFeatureSpec)
def _removed_feature(ctx: Context, test: RemovedFeatureSpec) -> Outcome:
    since = tuple(int(x) for x in test.since.split("."))
    version = _version(ctx)
    if version is not None and version >= since:
        return Outcome(Status.SKIP, f"Kubernetes {version[0]}.{version[1]}",
                       detail=f"not applicable: removed in Kubernetes {test.since}; see {test.replaced_by}")
    return Outcome(Status.MANUAL, detail=f"Kubernetes version unknown or older than {test.since}: "
                                         "review the PodSecurityPolicy objects and the admission plugin")


@dataclass(frozen=True)
class DistinctCaSpec(Spec):
    etcd_flag: str  # etcd's client CA flag
    apiserver_flag: str  # the API server's client CA flag


@evaluator("distinct_ca", DistinctCaSpec)
def _distinct_ca(ctx: Context, test: DistinctCaSpec) -> Outcome:
    etcd = ctx.node.components.get("etcd")
    api = ctx.node.components.get("kube-apiserver")
    if etcd is None:
        return Outcome(Status.SKIP, detail="etcd does not run on this node")
    etcd_ca = etcd.flag(test.etcd_flag)
    api_ca = api.flag(test.apiserver_flag) if api else None
    if not etcd_ca:
        return Outcome(Status.FAIL, f"--{test.etcd_flag} not set", "a CA used only for etcd",
                       (Evidence("flag", etcd.source, f"--{test.etcd_flag} not set"),), target="etcd")
    etcd_path = etcd.host_path(etcd_ca)
    ev = [Evidence("flag", etcd.source, etcd.cmdline.show(test.etcd_flag))]
    if api is None or api_ca is None:
        return Outcome(Status.MANUAL, detail="the API server's client CA is not visible on this node",
                       evidence=tuple(ev))
    api_path = api.host_path(api_ca)
    ev.append(Evidence("flag", api.source, api.cmdline.show(test.apiserver_flag)))
    same = etcd_path == api_path
    if not same:
        a, b = ctx.node.host(etcd_path), ctx.node.host(api_path)
        try:
            same = ctx.node.read_bytes(a) == ctx.node.read_bytes(b)
        except (OSError, ValueError):  # unreadable, a FIFO, too large
            same = False
    if same:
        return Outcome(Status.FAIL, f"etcd trusts {etcd_path}, the API server's client CA", "a CA used only for etcd",
                       tuple(ev), target="etcd")
    return Outcome(Status.PASS, etcd_path, "a CA used only for etcd", tuple(ev), target="etcd")


# ------------------------------------------------------------------ the container runtime

@dataclass(frozen=True)
class ContainerdConfigSpec(Spec):
    key: str  # dotted TOML key, quoted parts for plugin ids: 'plugins."io.containerd.grpc.v1.cri".disable_apparmor'
    op: str = field(default="eq", metadata=choices(*OPS))
    value: Scalar | tuple[Scalar, ...] | None = None
    default: Scalar | None = None  # containerd's own default where the file leaves the key out (1.6)

    def __post_init__(self) -> None:
        check_value(self.op, self.value)
        parse_key(self.key)


@evaluator("containerd_config", ContainerdConfigSpec)
def _containerd_config(ctx: Context, test: ContainerdConfigSpec) -> Outcome:
    runtime = ctx.runtime
    doc, problem = runtime.config
    path = runtime.config_path
    expected = describe(test.op, test.value)
    if problem:
        return Outcome(Status.ERROR, expected=expected, evidence=(Evidence("file", path, problem),),
                       detail=f"{path}: {problem}", target=path)
    setting = runtime.setting(test.key, test.default)
    observed = None if setting.value is None else show(setting.value)
    shown = "not set" if observed is None else observed
    detail = ""
    if setting.source == "default":
        shown += " (containerd's default)" if observed is not None else ""
        detail = "no configuration file: containerd's defaults apply" if doc is None else ""
    ok = compare(test.op, observed, test.value)
    return Outcome(Status.PASS if ok else Status.FAIL, shown, expected,
                   (Evidence("config", path, f"{test.key} = {shown}"),), detail, path)


@dataclass(frozen=True)
class RuntimeFactSpec(Spec):
    fact: str = field(metadata=choices(*FACTS))
    op: str = field(default="eq", metadata=choices(*OPS))
    value: Scalar | tuple[Scalar, ...] | None = None

    def __post_init__(self) -> None:
        check_value(self.op, self.value)


_NOT_LIVE = "a fact of the running kernel: only a scan of the live node has it"


@evaluator("runtime_fact", RuntimeFactSpec)
def _runtime_fact(ctx: Context, test: RuntimeFactSpec) -> Outcome:
    expected = describe(test.op, test.value)
    if not ctx.runtime.live:
        return Outcome(Status.SKIP, expected=expected, detail=_NOT_LIVE)
    fact = ctx.runtime.fact(test.fact)
    ok = compare(test.op, fact.value, test.value)
    observed = fact.value if fact.value is not None else "absent"
    return Outcome(Status.PASS if ok else Status.FAIL, observed, expected,
                   (Evidence("file", fact.source, fact.note or observed),), fact.note, fact.source)


@dataclass(frozen=True)
class ContainersConfinedSpec(Spec):
    seccomp: bool = True  # every container runs under a seccomp filter (mode 2)
    apparmor: bool = True  # every container has an AppArmor profile in enforce mode


_SECCOMP_MODES = {"0": "disabled", "1": "strict", "2": "filter"}


@evaluator("containers_confined", ContainersConfinedSpec)
def _containers_confined(ctx: Context, test: ContainersConfinedSpec) -> Outcome:
    wanted = [w for w, on in (("a seccomp filter", test.seccomp), ("an enforcing AppArmor profile", test.apparmor))
              if on]
    expected = "every container under " + " and ".join(wanted)
    if not ctx.runtime.live:
        return Outcome(Status.SKIP, expected=expected, detail=_NOT_LIVE)
    containers = ctx.runtime.containers
    if not containers:
        return Outcome(Status.SKIP, expected=expected, detail="no container runs on this node now")
    bad: list[str] = []
    evidence = []
    for c in containers:
        seccomp = _SECCOMP_MODES.get(c.seccomp, c.seccomp or "unknown")
        evidence.append(Evidence("process", f"pid {c.pid}", f"{c.name}: seccomp {seccomp}, AppArmor "
                                 f"{c.apparmor or 'no label'}"))
        if test.seccomp and c.seccomp != "2":
            bad.append(f"pid {c.pid} ({c.name}) seccomp {seccomp}")
        if test.apparmor and not c.apparmor.endswith("(enforce)"):
            bad.append(f"pid {c.pid} ({c.name}) AppArmor {c.apparmor or 'no label'}")
    target = f"{len(containers)} containers" if len(containers) > 1 else f"pid {containers[0].pid}"
    if bad:
        return Outcome(Status.FAIL, "; ".join(bad), expected, tuple(evidence), target=target)
    return Outcome(Status.PASS, f"{len(containers)} confined", expected, tuple(evidence), target=target)
