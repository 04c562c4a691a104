"""A busybox-static OCI image layout for workload tests, written locally (no registry): Debian's static
busybox with every applet as a symlink, a web root, one uncompressed layer."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

from tests.signer import ocibuild

INDEX_HTML = b"hello from a container on an obelisk node\n"


def busybox_root() -> list[ocibuild.Entry]:
    entries = [ocibuild.special(d, tarfile.DIRTYPE) for d in ("bin", "dev", "etc", "proc", "sbin", "sys", "tmp",
                                                               "usr", "usr/bin", "usr/sbin", "www")]
    entries.append(ocibuild.regular("bin/busybox", ocibuild.BUSYBOX.read_bytes(), 0o755))
    applets = subprocess.run([str(ocibuild.BUSYBOX), "--list-full"], capture_output=True, check=True,
                             text=True).stdout.split()
    for path in sorted(set(applets)):
        if path != "bin/busybox":
            entries.append(ocibuild.special(path, tarfile.SYMTYPE, linkname="/bin/busybox", mode=0o777))
    entries.append(ocibuild.regular("www/index.html", INDEX_HTML))
    entries.append(ocibuild.regular("etc/passwd", b"root:x:0:0:root:/:/bin/sh\n"))
    return entries


def build_layout(root: Path, cmd: list[str] | None = None) -> Path:
    """An OCI image layout at ROOT (one linux/amd64 image, ref name `latest`)."""
    b = ocibuild.LayoutBuilder(root)
    layer = b.layer(ocibuild.tar_of(busybox_root()), compress=False)
    image = b.image([layer], "amd64", cmd=cmd or ["/bin/sh"])
    return b.index([{**image, "annotations": {"org.opencontainers.image.ref.name": "latest"}}])
