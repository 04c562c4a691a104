"""Fixtures for the image pipeline: customer keys, a small spec, one build shared by a module."""

from __future__ import annotations

from pathlib import Path

import pytest

SPEC = """\
name: test-node
version: "1.0"
source_date_epoch: 1700000000
ima:
  policy: none
kubernetes:
  role: none
signing:
  key: keys/ima.key
  cert: keys/ima.pem
  ca: keys/ca.pem
rootfs:
  overlay: overlay
  permissions:
    - {path: "etc/secret.conf", mode: "0600"}
    - {path: "srv/app", mode: "0750", uid: 1000, gid: 1000}
    - {path: "srv/app/*", mode: "0640", uid: 1000, gid: 1000}
"""


def make_project(root: Path, key_type: str = "ecdsa-p256", spec: str = SPEC) -> Path:
    from obelisk.signer.keygen import generate

    generate(root / "keys", key_type)
    (root / "overlay/etc").mkdir(parents=True)
    (root / "overlay/etc/secret.conf").write_text("mode from the spec\n")
    (root / "overlay/srv/app").mkdir(parents=True)
    (root / "overlay/srv/app/state.db").write_text("owned by the app\n")
    (root / "overlay/usr/local/bin").mkdir(parents=True)
    (root / "overlay/usr/local/bin/tool").write_text("#!/bin/sh\necho tool\n")
    (root / "overlay/usr/local/bin/tool").chmod(0o700)
    (root / "spec.yaml").write_text(spec)
    return root / "spec.yaml"


@pytest.fixture(scope="module")
def built_image(tmp_path_factory):
    """(project dir, OUT) of one build of the test spec, with its own cache."""
    from obelisk.image.build import build
    from obelisk.image.cache import StepCache
    from obelisk.image.spec import load_spec

    root = tmp_path_factory.mktemp("image")
    spec_path = make_project(root)
    out = root / "out"
    build(load_spec(spec_path), out, cache=StepCache(root / "cache"), quiet=True)
    return root, out
