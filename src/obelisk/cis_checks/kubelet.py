"""The kubelet's effective configuration: command-line flags over the `--config` file over
`--config-dir` drop-ins (applied in file-name order) over the kubelet's defaults.

kube-bench's most reported false positive is reading a config file the kubelet does not use,
or missing a flag that overrides it. Here every value comes with where it was decided, so a
finding can say "--read-only-port=10255 on the command line overrides readOnlyPort: 0 in
/var/lib/kubelet/config.yaml".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from obelisk.cis_checks.node import Component, NodeView

KIND = "KubeletConfiguration"
API_VERSIONS = ("kubelet.config.k8s.io/v1beta1", "kubelet.config.k8s.io/v1")

# command-line flag -> configuration field path
FLAG_FIELDS: dict[str, str] = {
    "anonymous-auth": "authentication.anonymous.enabled",
    "authentication-token-webhook": "authentication.webhook.enabled",
    "client-ca-file": "authentication.x509.clientCAFile",
    "authorization-mode": "authorization.mode",
    "read-only-port": "readOnlyPort",
    "port": "port",
    "address": "address",
    "streaming-connection-idle-timeout": "streamingConnectionIdleTimeout",
    "make-iptables-util-chains": "makeIPTablesUtilChains",
    "event-qps": "eventRecordQPS",
    "tls-cert-file": "tlsCertFile",
    "tls-private-key-file": "tlsPrivateKeyFile",
    "tls-cipher-suites": "tlsCipherSuites",
    "tls-min-version": "tlsMinVersion",
    "rotate-certificates": "rotateCertificates",
    "rotate-server-certificates": "serverTLSBootstrap",
    "protect-kernel-defaults": "protectKernelDefaults",
    "pod-max-pids": "podPidsLimit",
    "seccomp-default": "seccompDefault",
    "pod-manifest-path": "staticPodPath",
    "feature-gates": "featureGates",
}
LIST_FIELDS = {"tlsCipherSuites"}

# Defaults of a kubelet started with a KubeletConfiguration file (v1beta1 defaulting).
CONFIG_DEFAULTS: dict[str, Any] = {
    "authentication.anonymous.enabled": False,
    "authentication.webhook.enabled": True,
    "authorization.mode": "Webhook",
    "readOnlyPort": 0,
    "streamingConnectionIdleTimeout": "4h0m0s",
    "makeIPTablesUtilChains": True,
    "eventRecordQPS": 50,
    "rotateCertificates": False,
    "serverTLSBootstrap": False,
    "protectKernelDefaults": False,
    "podPidsLimit": -1,
    "seccompDefault": False,
    "featureGates.RotateKubeletServerCertificate": True,  # beta, on by default since 1.12
}
# Defaults of a kubelet started with flags only: the insecure legacy values.
FLAG_DEFAULTS: dict[str, Any] = {
    **CONFIG_DEFAULTS,
    "authentication.anonymous.enabled": True,
    "authentication.webhook.enabled": False,
    "authorization.mode": "AlwaysAllow",
    "readOnlyPort": 10255,
}


# Fields the kubelet's defaulting treats as unset when they hold their zero value: a config file
# written by kubeadm says "streamingConnectionIdleTimeout: 0s", and the kubelet then runs with 4h.
ZERO_MEANS_DEFAULT = {"streamingConnectionIdleTimeout": "4h0m0s"}


@dataclass(frozen=True)
class Setting:
    key: str
    value: Any  # None: not set anywhere and no default
    source: str  # "flag --x=y (pid 12)", "/var/lib/kubelet/config.yaml", "/etc/.../config.d/50.conf", "default"
    overridden: tuple[str, ...] = ()  # lower layers that set another value ("readOnlyPort: 0 in FILE")
    note: str = ""  # how the kubelet interprets what was written ("0s means the default, 4h0m0s")

    @property
    def is_set(self) -> bool:
        return self.value is not None and self.source != "default"


class KubeletConfig:
    """The effective configuration of one kubelet on a node."""

    def __init__(self, node: NodeView, component: Component):
        self.node = node
        self.component = component
        self.errors: list[tuple[str, str]] = []  # (node path, message)
        self.layers: list[tuple[str, dict[str, Any]]] = []  # lowest precedence first
        self.config_file = self._path_flag("config")
        self.config_dir = self._path_flag("config-dir")
        if self.config_file:
            self._load_layer(self.config_file)
        if self.config_dir:
            try:
                d = node.host(self.config_dir)
            except OSError as exc:
                self.errors.append((self.config_dir, f"cannot read: {exc.strerror}"))
                d = None
            if d is None:
                pass
            elif d.is_dir():
                for f in sorted(d.iterdir(), key=lambda p: p.name):
                    if f.name.endswith(".conf"):
                        self._load_layer(self.config_dir.rstrip("/") + "/" + f.name)
            elif d.exists():
                self.errors.append((self.config_dir, "--config-dir is not a directory"))
        self.defaults = CONFIG_DEFAULTS if self.config_file else FLAG_DEFAULTS

    def _path_flag(self, name: str) -> str | None:
        value = self.component.flag(name)
        return value if value else None

    @property
    def files(self) -> list[str]:
        """The configuration files the kubelet reads (main file, then drop-ins)."""
        return [path for path, _ in self.layers] + [p for p, _ in self.errors if p != self.config_dir]

    def _load_layer(self, node_path: str) -> None:
        try:
            from obelisk.core.yamlsafe import load_yaml

            doc = load_yaml(self.node.read_text(self.node.host(node_path)), node_path)
        except (OSError, ValueError) as exc:
            self.errors.append((node_path, f"cannot read: {getattr(exc, 'strerror', None) or exc}"))
            return
        except Exception as exc:  # InputError from the YAML loader
            self.errors.append((node_path, str(exc).removeprefix(f"{node_path}: ")))
            return
        if not isinstance(doc, dict):
            self.errors.append((node_path, f"expected a {KIND} mapping, got {type(doc).__name__}"))
            return
        if doc.get("kind") != KIND:
            self.errors.append((node_path, f"kind {doc.get('kind')!r}, expected {KIND!r}"))
            return
        if doc.get("apiVersion") not in API_VERSIONS:
            self.errors.append((node_path, f"apiVersion {doc.get('apiVersion')!r}, expected one of "
                                           f"{', '.join(API_VERSIONS)}"))
            return
        self.layers.append((node_path, doc))

    def _flag_for(self, key: str) -> tuple[str, Any] | None:
        top, _, rest = key.partition(".")
        if top == "featureGates" and rest:
            gates = self.component.flag("feature-gates")
            if gates:
                for item in gates.split(","):
                    name, _, value = item.partition("=")
                    if name.strip() == rest:
                        return f"--feature-gates={gates}", _parse_bool(value.strip())
            return None
        for flag, path in FLAG_FIELDS.items():
            if path == key:
                flag_value = self.component.flag(flag)
                if flag_value is not None:
                    parsed: Any = flag_value.split(",") if key in LIST_FIELDS else flag_value
                    return f"--{flag}={flag_value}", parsed
        return None

    def get(self, key: str) -> Setting:
        found: list[tuple[str, Any]] = []
        flag = self._flag_for(key)
        if flag is not None:
            found.append((f"flag {flag[0]} ({self.component.source})", flag[1]))
        for path, doc in reversed(self.layers):
            value = _lookup(doc, key)
            if value is not _MISSING:
                found.append((path, value))
        if not found:
            return Setting(key, self.defaults.get(key), "default")
        (source, value), lower = found[0], found[1:]
        overridden = tuple(f"{key}: {_show(v)} in {src}" for src, v in lower if _show(v) != _show(value))
        if key in ZERO_MEANS_DEFAULT and not source.startswith("flag ") and _is_zero_duration(value):
            return Setting(key, ZERO_MEANS_DEFAULT[key], source, overridden,
                           f"{key}: {_show(value)} in {source} means the kubelet's default, {ZERO_MEANS_DEFAULT[key]}")
        return Setting(key, value, source, overridden)


_MISSING = object()


def _lookup(doc: dict[str, Any], key: str) -> Any:
    cur: Any = doc
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _is_zero_duration(value: Any) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == 0
    return isinstance(value, str) and value.strip() in ("0", "0s", "0m", "0h", "0m0s", "0h0m0s", "")


def _parse_bool(value: str) -> Any:
    low = value.lower()
    if low in ("true", "t", "1"):
        return True
    if low in ("false", "f", "0"):
        return False
    return value


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def static_pod_dir(node: NodeView, component: Component) -> str | None:
    """Effective staticPodPath of a kubelet (used to find manifests outside the default directory)."""
    value = KubeletConfig(node, component).get("staticPodPath").value
    return value if isinstance(value, str) and value else None
