"""Generated measurement lists for tests: every template, deterministic content."""

from __future__ import annotations

import hashlib

from obelisk.ima_policy.measurement_list import Entry, digest_field, make_entry, name_field


def file_entry(path: str, content: bytes, template: str = "ima-ng", algo: str = "sha256", sig: bytes = b"",
               number: int = 1, byte_order: str = "little") -> Entry:
    digest = hashlib.new(algo, content).digest()
    d = digest_field(algo, digest)
    n = name_field(path)
    values = {
        "ima": [hashlib.sha1(content).digest(), path.encode()],
        "ima-ng": [d, n],
        "ima-ngv2": [digest_field(algo, digest, "ima"), n],
        "ima-sig": [d, n, sig],
        "ima-sigv2": [digest_field(algo, digest, "ima"), n, sig],
        "ima-buf": [d, n, content],
        "ima-modsig": [d, n, sig, b"", b""],
        "evm-sig": [d, n, b"", b"security.ima\0", (len(sig)).to_bytes(4, "little"), sig,
                    (0).to_bytes(4, "little"), (0).to_bytes(4, "little"), (0o100755).to_bytes(2, "little")],
    }[template]
    return make_entry(template, values, number=number, byte_order=byte_order)


def boot_aggregate_entry(digest: bytes, algo: str = "sha256") -> Entry:
    return make_entry("ima-ng", [digest_field(algo, digest), name_field("boot_aggregate")])


def sample_entries(n: int = 20, template: str = "ima-ng") -> list[Entry]:
    out = [boot_aggregate_entry(hashlib.sha256(b"pcrs 0-9").digest())]
    for i in range(1, n):
        out.append(file_entry(f"/usr/bin/tool {i}" if i % 7 == 0 else f"/usr/bin/tool{i}", b"content %d" % i,
                              template, number=i + 1))
    return out
