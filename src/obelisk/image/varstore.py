"""The OVMF variable store a node boots with: the customer's PK, KEK and db enrolled, Secure Boot on or off.

Written with virt-firmware (PyPI `virt-firmware`, Gerd Hoffmann's tools behind `virt-fw-vars`), the one
place obelisk uses it: its edk2 varstore reader/writer takes Debian's empty template
(`/usr/share/OVMF/OVMF_VARS_4M.fd`, package ovmf, the store that goes with `OVMF_CODE_4M.secboot.fd`)
and writes the variables into its authenticated-variable region.

What goes in:

* PK, KEK and db: one EFI signature list each with the customer's certificate, owner GUID derived from
  the customer CA (`signer.secureboot.Enrollment`). No Microsoft keys: only the customer's db key
  admits a boot image. No dbx: a fresh store has nothing to revoke, and the firmware measures an
  absent dbx as empty data (`tpm/uefi.py`).
* SecureBootEnable (OVMF's own variable, vendor GUID f0a30bc7-...) 1 and CustomMode 0 for an enforcing
  store. At each boot edk2's AuthVariableLib derives SecureBoot = 1 only when PK exists (user mode)
  and SecureBootEnable is 1.
* Secure Boot off (`secure_boot=False`): the same keys, SecureBootEnable 0. This is the firmware setup
  switch a person at the console flips without PK's private key; AuthVariableLib then sets
  SecureBoot 0, DxeImageVerificationLib admits any image without measuring an authority, and PCR 7
  differs from the enforcing store's only in the SecureBoot event and the missing authority, so the
  verifier names exactly that. (Deleting PK instead, setup mode, would also change the PK event.)

Deterministic: variables are written sorted by name into the template's region, the rest of the
template is copied; the timestamps of the authenticated variables (PK, KEK, db) are what virt-firmware
sets when it adds a certificate: the certificate's notBefore. Nothing depends on the clock or on random
GUIDs, so the same template and certificates give the same bytes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obelisk.core import atomic
from obelisk.core.errors import InputError, ObeliskError
from obelisk.core.inputs import read_bounded
from obelisk.signer.secureboot import Enrollment
from obelisk.tpm import uefi
from obelisk.tpm.prediction import PcrPrediction

OVMF_VARS_TEMPLATE = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
OVMF_PACKAGE = "ovmf"
MAX_TEMPLATE_SIZE = 64 << 20  # OVMF_VARS_4M.fd is 528 KiB
SECURE_BOOT_ENABLE = "SecureBootEnable"
CUSTOM_MODE = "CustomMode"
SECURE_BOOT_VARIABLES = ("PK", "KEK", "db", "dbx")


@dataclass(frozen=True)
class SecureBootVariables:
    """What a store holds for PCR 7: Secure Boot enforcing or not, and each signature database's contents
    (empty when the variable does not exist, as the firmware measures it)."""

    secure_boot: bool
    pk: bytes
    kek: bytes
    db: bytes
    dbx: bytes


def _open_template(template: Path) -> Any:
    if not template.is_file():
        raise ObeliskError(f"{template}: OVMF variable store template not found "
                           f"(Debian package {OVMF_PACKAGE}; run scripts/setup)")
    read_bounded(template, "OVMF variable store template", MAX_TEMPLATE_SIZE)  # a regular file of sane size
    from virt.firmware.varstore.edk2 import Edk2VarStore

    try:
        return Edk2VarStore(str(template))
    except (SystemExit, struct.error, ValueError, IndexError, RuntimeError):
        # virt-firmware logs and exits on a file that is not an edk2 variable store, or trips over its lengths
        raise InputError("not an edk2 (OVMF) variable store", source=str(template)) from None


def render_varstore(enrollment: Enrollment, *, secure_boot: bool = True,
                    template: Path = OVMF_VARS_TEMPLATE) -> tuple[bytes, SecureBootVariables]:
    """The variable store's bytes and what PCR 7 will see of it (module docstring)."""
    store = _open_template(template)
    varlist = store.get_varlist()
    for name in (*SECURE_BOOT_VARIABLES, SECURE_BOOT_ENABLE, CUSTOM_MODE):
        if name in varlist:
            del varlist[name]  # a template with keys of its own (OVMF_VARS_4M.ms.fd) gets the customer's only
    for name, der in (("PK", enrollment.pk), ("KEK", enrollment.kek), ("db", enrollment.db)):
        variable = varlist.create(name)
        variable.sigdb_add_cert_data(enrollment.owner, der)  # timestamp: the certificate's notBefore
    varlist.set_bool(SECURE_BOOT_ENABLE, secure_boot)
    varlist.set_bool(CUSTOM_MODE, False)
    data = store.bytes_varstore(varlist)
    seen = SecureBootVariables(secure_boot, *(bytes(varlist[n].data) if n in varlist else b""
                                              for n in SECURE_BOOT_VARIABLES))
    return data, seen


def write_varstore(out: str | os.PathLike[str], enrollment: Enrollment, *, secure_boot: bool = True,
                   template: Path = OVMF_VARS_TEMPLATE) -> SecureBootVariables:
    """Write the store to `out` (atomically) and return what PCR 7 will see of it."""
    data, seen = render_varstore(enrollment, secure_boot=secure_boot, template=template)
    atomic.write_bytes(out, data)
    return seen


def pcr7_prediction(variables: SecureBootVariables, enrollment: Enrollment) -> PcrPrediction:
    """PCR 7 after the firmware loaded a UKI signed by the enrollment's db key from a store holding `variables`.

    With Secure Boot on, the db entry that verified the UKI is measured as the authority; off, nothing is verified.
    """
    authority = enrollment.db_authority if variables.secure_boot else None
    return uefi.pcr7_prediction(variables.secure_boot, variables.pk, variables.kek, variables.db, variables.dbx,
                                authority)
