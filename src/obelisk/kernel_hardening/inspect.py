"""`obelisk kernel inspect`: prove from the binary what a kernel image is.

- the embedded config (IKCONFIG) is extracted and compared with the intended one;
- module-less: no `__ksymtab*` section with content (nothing exported to modules), the
  init_module / finit_module / delete_module entries of the syscall table point at
  `sys_ni_syscall` (ENOSYS), and no module loader code is present;
- the syscalls compiled out (every table entry that is `sys_ni_syscall`);
- the X.509 certificates compiled in, and whether the customer CA is among them.

Symbols are used when the image has them (vmlinux); a stripped image (the payload of a
bzImage) is read through its section headers: the syscall table is found as the run of
pointers into .text in .rodata with exactly as many entries as x86_64 has syscalls.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from obelisk.core.errors import InputError
from obelisk.core.findings import Evidence, Finding, Report, Severity, Status, Subject
from obelisk.kernel_hardening import kconfig_file
from obelisk.kernel_hardening.kimage import KernelImage

if TYPE_CHECKING:
    from cryptography import x509

BENCHMARK = "kernel-hardening"
MODULE_SYSCALLS = ("init_module", "delete_module", "finit_module")
# printk formats that exist only in the module loader (kernel/module/) and kmod (kernel/kmod.c)
LOADER_STRINGS = (b"loading out-of-tree module taints kernel", b"module is from the staging directory",
                  b"request_module: modprobe %s cannot be processed")
LOADER_SYMBOLS = ("load_module", "__request_module", "module_alloc", "do_init_module")


def syscall_names() -> dict[int, str]:
    data = json.loads(Path(__file__).with_name("syscalls_x86_64.json").read_text())
    return {int(k): v for k, v in data["syscalls"].items()}


_ENDBR64 = b"\xf3\x0f\x1e\xfa"
_MOV_ENOSYS = b"\x48\xc7\xc0\xda\xff\xff\xff"  # mov $-38 (-ENOSYS), %rax


def is_enosys_stub(code: bytes) -> bool:
    """x86_64 COND_SYSCALL stub: [endbr64] mov $-ENOSYS,%rax; ret | jmp __x86_return_thunk.

    A syscall compiled out is not an alias of sys_ni_syscall on x86 but its own weak function
    (arch/x86/include/asm/syscall_wrapper.h) that does nothing but return -ENOSYS.
    """
    if code.startswith(_ENDBR64):
        code = code[4:]
    if not code.startswith(_MOV_ENOSYS):
        return False
    rest = code[len(_MOV_ENOSYS):]
    return rest[:1] == b"\xc3" or rest[:1] == b"\xe9"


@dataclass(frozen=True)
class SyscallTable:
    entries: tuple[int, ...]  # target address per syscall number
    ni: int  # address of sys_ni_syscall
    how: str  # "symbols" or "heuristic"
    enosys: frozenset[int] = frozenset()  # syscall numbers whose target only returns -ENOSYS

    def compiled_out(self, names: dict[int, str]) -> list[str]:
        return [names[nr] for nr in sorted(names) if nr in self.enosys]


def _classify(img: KernelImage, entries: tuple[int, ...], ni: int) -> frozenset[int]:
    out = set()
    for nr, addr in enumerate(entries):
        if addr == ni:
            out.add(nr)
            continue
        try:
            code = img.read(addr, 16)
        except InputError:
            continue
        if is_enosys_stub(code):
            out.add(nr)
    return frozenset(out)


def find_syscall_table(img: KernelImage, names: dict[int, str]) -> SyscallTable | None:
    count = max(names) + 1
    if "sys_call_table" in img.symbols:
        addr, size = img.symbols["sys_call_table"]
        n = size // 8 if size else count
        entries = struct.unpack(f"<{n}Q", img.read(addr, n * 8))
        ni = next((img.symbols[s][0] for s in ("__x64_sys_ni_syscall", "sys_ni_syscall") if s in img.symbols), None)
        if ni is None:
            ni = Counter(entries).most_common(1)[0][0]
        return SyscallTable(entries=entries, ni=ni, how="symbols", enosys=_classify(img, entries, ni))
    text = img.section(".text")
    rodata = img.section(".rodata")
    if text is None or rodata is None:
        return None
    blob = img.elf[rodata.offset:rodata.offset + rodata.size]
    lo, hi = text.addr, text.addr + text.size
    values = struct.unpack(f"<{len(blob) // 8}Q", blob[: len(blob) // 8 * 8])
    run_start, best = 0, None
    for i, v in enumerate((*values, 0)):
        if lo <= v < hi:
            continue
        if i - run_start >= count:
            # the table is the first `count` entries of an aligned run whose dominant value is ni_syscall
            for start in range(run_start, i - count + 1):
                entries = values[start:start + count]
                common, freq = Counter(entries).most_common(1)[0]
                if freq >= 3 and entries[0] != common and len(set(entries)) > count // 2:
                    best = SyscallTable(entries=tuple(entries), ni=common, how="heuristic",
                                        enosys=_classify(img, tuple(entries), common))
                    break
            if best:
                break
        run_start = i + 1
    return best


def embedded_certificates(img: KernelImage) -> list[x509.Certificate]:
    """Every DER X.509 certificate found in the image's loaded sections."""
    from cryptography import x509

    certs, seen = [], set()
    data = img.elf
    i = data.find(b"\x30\x82")
    while i >= 0:
        if i + 8 <= len(data) and data[i + 4:i + 6] == b"\x30\x82":
            length = int.from_bytes(data[i + 2:i + 4], "big") + 4
            der = data[i:i + length]
            if len(der) == length and der not in seen:
                try:
                    cert = x509.load_der_x509_certificate(der)
                    certs.append(cert)
                    seen.add(der)
                    i = data.find(b"\x30\x82", i + length)
                    continue
                except ValueError:
                    pass
        i = data.find(b"\x30\x82", i + 1)
    return certs


def _fingerprint(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex()


def _f(fid: str, title: str, status: Status, detail: str, target: str, *, severity: Severity = Severity.HIGH,
       observed: str | None = None, expected: str | None = None, evidence: tuple[Evidence, ...] = ()) -> Finding:
    return Finding(id=f"kernel.inspect.{fid}", title=title, status=status, severity=severity, target=target,
                   observed=observed, expected=expected, evidence=evidence, benchmark=BENCHMARK,
                   section="image", detail=detail)


def inspect(img: KernelImage, *, intended_config: str | None = None, ca_pem: bytes | None = None,
            config_source: str = "") -> list[Finding]:
    target = img.source
    out: list[Finding] = []
    embedded = None
    if img.config_text is None:
        out.append(_f("config.embedded", "configuration embedded (IKCONFIG)", Status.FAIL,
                      "no IKCFG_ST marker: the kernel was built without CONFIG_IKCONFIG, so its configuration "
                      "cannot be proven from the binary", target, severity=Severity.MEDIUM))
    else:
        embedded = kconfig_file.parse(img.config_text.encode(), f"{target} (embedded config)")
        out.append(_f("config.embedded", "configuration embedded (IKCONFIG)", Status.PASS,
                      f"{len(embedded.values)} options embedded", target, severity=Severity.MEDIUM))
        if intended_config is not None:
            want = kconfig_file.meaningful_lines(intended_config)
            got = kconfig_file.meaningful_lines(img.config_text)
            if want == got:
                out.append(_f("config.matches", "embedded configuration equals the intended one", Status.PASS,
                              f"{len(got)} option lines identical to {config_source}", target))
            else:
                missing = [ln for ln in want if ln not in set(got)]
                extra = [ln for ln in got if ln not in set(want)]
                out.append(_f("config.matches", "embedded configuration equals the intended one", Status.FAIL,
                              f"{len(missing)} intended lines missing, {len(extra)} unexpected; first: "
                              f"{(missing or extra)[0]!r}", target,
                              observed="; ".join(extra[:5]), expected="; ".join(missing[:5])))
    # --- module-less proof ---
    if embedded is not None:
        modules = embedded.get("CONFIG_MODULES") or "n"
        out.append(_f("modules.config", "CONFIG_MODULES=n in the embedded config",
                      Status.PASS if modules == "n" else Status.FAIL,
                      f"embedded config has CONFIG_MODULES={modules}", target, severity=Severity.CRITICAL,
                      observed=modules, expected="n"))
    ksym = [s for s in img.sections if s.name.startswith("__ksymtab") or s.name.startswith("__kcrctab")]
    with_content = [s for s in ksym if s.size]
    out.append(_f("modules.ksymtab", "no symbols exported to modules (__ksymtab*)",
                  Status.FAIL if with_content else Status.PASS,
                  ("exported symbol tables present: " + ", ".join(f"{s.name} ({s.size} bytes)" for s in with_content))
                  if with_content else
                  (f"{len(ksym)} __ksymtab* sections, all empty" if ksym else "no __ksymtab* sections"),
                  target, severity=Severity.CRITICAL))
    names = syscall_names()
    table = find_syscall_table(img, names)
    if table is None:
        out.append(_f("modules.syscalls", "module syscalls are ENOSYS stubs", Status.ERROR,
                      "syscall table not found in the image", target, severity=Severity.CRITICAL))
    else:
        number = {v: k for k, v in names.items()}
        live = [n for n in MODULE_SYSCALLS if number[n] not in table.enosys]
        targets = ", ".join(f"{n} -> {table.entries[number[n]]:#x}" for n in MODULE_SYSCALLS)
        out.append(_f("modules.syscalls", "init_module, finit_module, delete_module are ENOSYS stubs",
                      Status.FAIL if live else Status.PASS,
                      (f"implemented: {', '.join(live)} ({targets})" if live else
                       f"all three are stubs that only return -ENOSYS (sys_ni_syscall or "
                       f"'mov $-38,%rax; ret'): {targets}")
                      + f" (syscall table found by {table.how})", target, severity=Severity.CRITICAL))
        gone = table.compiled_out(names)
        out.append(_f("syscalls.compiled-out", "syscalls compiled out", Status.PASS,
                      f"{len(gone)} of {len(names)} syscalls are ENOSYS stubs: {', '.join(gone)}", target,
                      severity=Severity.INFO, observed=str(len(gone))))
    loader_syms = [s for s in LOADER_SYMBOLS if s in img.symbols]
    loader_strs = [s.decode() for s in LOADER_STRINGS if s in img.elf]
    out.append(_f("modules.loader", "no module loader in the kernel",
                  Status.FAIL if (loader_syms or loader_strs) else Status.PASS,
                  ("module loader present: " + ", ".join(loader_syms + [repr(s) for s in loader_strs]))
                  if (loader_syms or loader_strs) else
                  ("no module loader symbols (" + ", ".join(LOADER_SYMBOLS) + ") and no loader messages"
                   if img.symbols else "stripped image: no module loader or kmod messages in the image"),
                  target, severity=Severity.CRITICAL))
    # --- certificates ---
    certs = embedded_certificates(img)
    evidence = tuple(Evidence(kind="certificate", source=target, detail=c.subject.rfc4514_string(),
                              location=f"sha256:{_fingerprint(c)}") for c in certs)
    if ca_pem is not None:
        from cryptography import x509

        try:
            wanted = x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise InputError("--ca: not a PEM X.509 certificate") from None
        have = {_fingerprint(c) for c in certs}
        absent = [w for w in wanted if _fingerprint(w) not in have]
        out.append(_f("ca.present", "customer CA compiled in as a trusted key",
                      Status.FAIL if absent else Status.PASS,
                      (f"not embedded: {', '.join(w.subject.rfc4514_string() for w in absent)}" if absent else
                       f"{wanted[0].subject.rfc4514_string()} (sha256:{_fingerprint(wanted[0])}) is embedded")
                      + f"; {len(certs)} certificate(s) in the image", target, evidence=evidence))
    else:
        out.append(_f("ca.embedded", "certificates compiled in", Status.PASS,
                      f"{len(certs)} certificate(s): " + ", ".join(c.subject.rfc4514_string() for c in certs),
                      target, severity=Severity.INFO, evidence=evidence))
    return out


def inspect_file(image: str, *, config: str | None = None, ca: str | None = None) -> Report:
    """`obelisk kernel inspect`: the findings about one kernel image file, as a report."""
    from obelisk.core.inputs import read_bounded
    from obelisk.kernel_hardening import kimage

    data = read_bounded(image, "kernel image", kimage.MAX_IMAGE_BYTES)
    img = kimage.parse(data, image)
    intended = None
    if config:
        raw = read_bounded(config, "kernel configuration", kconfig_file.MAX_CONFIG_BYTES)
        kconfig_file.parse(raw, config)
        intended = raw.decode(errors="replace")
    ca_pem = read_bounded(ca, "CA certificate", 1 << 20) if ca else None
    findings = inspect(img, intended_config=intended, ca_pem=ca_pem, config_source=config or "")
    digest = hashlib.sha256(data).hexdigest()
    return Report(findings=tuple(findings), command="obelisk kernel inspect",
                  subject=Subject(kind="kernel", name=image, digest=f"sha256:{digest}",
                                  attributes=(("banner", img.banner[:200]), ("format", img.format),
                                              ("compression", img.compression),
                                              ("stripped", str(img.stripped).lower()))))
