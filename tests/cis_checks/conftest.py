"""Helpers for cis_checks tests: rendered node trees and small edits to break them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from obelisk.cis_checks.render import render_tree
from obelisk.core.findings import Report, Status

APISERVER = "etc/kubernetes/manifests/kube-apiserver.yaml"
CONTROLLER_MANAGER = "etc/kubernetes/manifests/kube-controller-manager.yaml"
SCHEDULER = "etc/kubernetes/manifests/kube-scheduler.yaml"
ETCD = "etc/kubernetes/manifests/etcd.yaml"
KUBELET_CONFIG = "etc/kubernetes/kubelet/config.yaml"
KUBELET_DROPINS = "etc/kubernetes/kubelet/config.d"
KUBELET_UNIT = "etc/systemd/system/kubelet.service"


@pytest.fixture
def control_plane(tmp_path: Path) -> Path:
    root = tmp_path / "cp"
    render_tree(root, "control-plane", "1.31")
    return root


@pytest.fixture
def worker(tmp_path: Path) -> Path:
    root = tmp_path / "worker"
    render_tree(root, "worker", "1.31")
    return root


def edit(root: Path, rel: str, pattern: str, replacement: str) -> None:
    """Replace one regex match in a rendered file, keeping its mode."""
    path = root / rel
    text = path.read_text()
    new, n = re.subn(pattern, replacement, text, count=1, flags=re.M)
    assert n == 1, f"{pattern!r} not found in {rel}"
    path.write_text(new)


def failing(report: Report) -> dict[str, str | None]:
    """id -> observed of every failed or errored finding."""
    return {f.id: f.observed for f in report.findings if f.status in (Status.FAIL, Status.ERROR)}


def by_id(report: Report, fid: str):
    matches = [f for f in report.findings if f.id == fid]
    assert len(matches) == 1, fid
    return matches[0]
