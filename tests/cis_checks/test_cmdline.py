"""Flags as pflag reads them; systemd units as systemd reads them; the kubelet's precedence rules."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from obelisk.cis_checks.cmdline import expand_exec, find_unit_files, parse_flags, parse_unit
from obelisk.cis_checks.kubelet import KubeletConfig
from obelisk.cis_checks.node import NodeView


def test_flag_forms():
    cl = parse_flags(["kube-apiserver", "--a=1", "--b", "2", "--profiling", "false", "-v=3", "--a=9", "--x"])
    assert cl.get("a") == "9"  # the last occurrence wins
    assert cl.get("b") == "2"
    assert cl.get("profiling") == "true"  # a boolean never takes the next word
    assert cl.get("v") == "3" and cl.get("x") == "true" and cl.get("missing") is None
    assert cl.show("a") == "--a=9"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=30))
def test_flag_parser_total(argv):
    cl = parse_flags(["x", *argv])
    assert all(isinstance(v.value, str) for v in cl.flags.values())


def test_kubeadm_style_unit_with_dropins_and_env_files(tmp_path):
    unit_dir = tmp_path / "usr/lib/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / "kubelet.service").write_text("[Service]\nExecStart=/usr/bin/kubelet --old-flag\n")
    dropins = tmp_path / "usr/lib/systemd/system/kubelet.service.d"
    dropins.mkdir()
    (dropins / "10-kubeadm.conf").write_text(
        "[Service]\n"
        'Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"\n'
        "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env\n"
        "EnvironmentFile=-/etc/default/kubelet\n"
        "ExecStart=\n"
        "ExecStart=/usr/bin/kubelet $KUBELET_CONFIG_ARGS \\\n  $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS\n")
    (tmp_path / "var/lib/kubelet").mkdir(parents=True)
    (tmp_path / "var/lib/kubelet/kubeadm-flags.env").write_text(
        'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///run/containerd.sock --read-only-port=10255"\n')
    etc_dropins = tmp_path / "etc/systemd/system/kubelet.service.d"
    etc_dropins.mkdir(parents=True)
    (etc_dropins / "20-extra.conf").write_text('[Service]\nEnvironment="KUBELET_EXTRA_ARGS=--v=2"\n')
    files = find_unit_files(tmp_path, "kubelet.service")
    assert [f.name for f in files] == ["kubelet.service", "10-kubeadm.conf", "20-extra.conf"]
    unit = parse_unit(tmp_path, files, lambda p: p.read_text())
    assert unit.exec_start == ("/usr/bin/kubelet", "--config=/var/lib/kubelet/config.yaml",
                               "--container-runtime-endpoint=unix:///run/containerd.sock", "--read-only-port=10255",
                               "--v=2")
    (tmp_path / "var/lib/kubelet/config.yaml").write_text(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nreadOnlyPort: 0\n")
    node = NodeView(tmp_path)
    kc = KubeletConfig(node, node.components["kubelet"])
    s = kc.get("readOnlyPort")
    assert s.value == "10255" and s.source.startswith("flag --read-only-port=10255")
    assert s.overridden == ("readOnlyPort: 0 in /var/lib/kubelet/config.yaml",)
    assert kc.get("authentication.anonymous.enabled").value is False  # config-file defaults apply
    assert kc.get("authentication.anonymous.enabled").source == "default"


def test_flags_only_kubelet_gets_legacy_insecure_defaults(tmp_path):
    d = tmp_path / "etc/systemd/system"
    d.mkdir(parents=True)
    (d / "kubelet.service").write_text("[Service]\nExecStart=/usr/bin/kubelet --kubeconfig=/etc/k.conf\n")
    node = NodeView(tmp_path)
    kc = KubeletConfig(node, node.components["kubelet"])
    assert kc.get("authentication.anonymous.enabled").value is True
    assert kc.get("authorization.mode").value == "AlwaysAllow"
    assert kc.get("readOnlyPort").value == 10255


def test_braced_variables_do_not_split():
    assert expand_exec(["$A", "${A}", "x${B}y"], {"A": "1 2", "B": "z"}) == ["1", "2", "1 2", "xzy"]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=400))
def test_unit_parser_total(text):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "kubelet.service"
        p.write_text(text)
        try:
            unit = parse_unit(Path(d), (p,), lambda f: f.read_text())
        except OSError:  # a required EnvironmentFile= that does not exist: systemd refuses the unit too
            return
        assert isinstance(unit.exec_start, tuple)
