"""`obelisk disk ...`: LUKS2 volumes unlocked by keys sealed in the TPM (argument parsing and rendering).

Every disk command takes `--format text|json` (text unless asked: `enroll` prints a recovery key
for a person to write down). Old spellings still work, each with a one-line deprecation warning:
`--json` (now `--format json`) and `disk enroll --format` without a value (now `--format-volume`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from obelisk.cli.common import OUTPUT_FORMATS, add_json_alias, add_output_options, emit_result, warn_deprecated


class _FormatOrFormatVolume(argparse.Action):
    """`disk enroll --format text|json` is the output format; a bare `--format` is the old `--format-volume`."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        if values is None:
            warn_deprecated(parser, "--format", "--format-volume")
            namespace.format_volume = True
        else:
            namespace.format = values


def register(sub: argparse._SubParsersAction) -> None:
    _register_disk(sub)


def _register_disk(sub: argparse._SubParsersAction) -> None:
    from obelisk.cli.main import subcommand_group
    from obelisk.cli.signer import add_passphrase_options

    disk = subcommand_group(sub, "disk", "LUKS2 volumes unlocked by keys sealed in the TPM")

    def device(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", required=True, metavar="FILE|BLOCKDEV", help="LUKS2 volume (file or block device)")
        p.add_argument("--tcti", default=None, help="TPM to use (default $TPM2TOOLS_TCTI, else device:/dev/tpmrm0)")

    p = disk.add_parser("enroll", help="seal a new key for the volume in the TPM and add a recovery key")
    device(p)
    p.add_argument("--pcrs", required=True, help="sha256 PCRs to seal to, e.g. 7,11")
    p.add_argument("--pcr-value", action="append", default=[], metavar="N=HEX",
                   help="seal to this value of PCR N instead of the current one (e.g. predicted by the build)")
    p.add_argument("--key-file", metavar="FILE", help="an existing passphrase of the volume (file, or - for stdin)")
    p.add_argument("--format-volume", dest="format_volume", action="store_true",
                   help="the device is not LUKS2 yet: create the volume (destroys its contents)")
    p.add_argument("--policy-key", metavar="PEM",
                   help="customer public key: unseal under any PCR policy this key signed (PolicyAuthorize)")
    p.add_argument("--no-recovery", action="store_true", help="do not add a recovery key (not recommended)")
    p.add_argument("--format", nargs="?", const=None, default=None, choices=OUTPUT_FORMATS,
                   action=_FormatOrFormatVolume,
                   help="output format (default: text); without a value: deprecated spelling of --format-volume")
    add_output_options(p, format_option=False, verbose=False, default="text")
    add_json_alias(p)
    p.set_defaults(handler=_disk_enroll)

    p = disk.add_parser("unlock", help="unseal the key with the TPM and open the volume")
    device(p)
    p.add_argument("--name", help="device-mapper name (default obelisk-<file name>)")
    p.add_argument("--test", action="store_true", help="only prove the unsealed key opens its keyslot")
    p.add_argument("--signed-policy", action="append", default=[], metavar="FILE",
                   help="a PCR policy signed by the customer key (besides those stored in the token)")
    add_output_options(p, verbose=False, default="text")
    add_json_alias(p)
    p.set_defaults(handler=_disk_unlock)

    p = disk.add_parser("reseal", help="seal a fresh key to the current PCR values (no data is touched)")
    device(p)
    p.add_argument("--pcrs", help="PCRs to seal to (default: the ones sealed to before)")
    p.add_argument("--pcr-value", action="append", default=[], metavar="N=HEX")
    p.add_argument("--recovery-key-file", metavar="FILE",
                   help="recovery key (file, or - for stdin), needed when the TPM refuses the old policy")
    add_output_options(p, verbose=False, default="text")
    add_json_alias(p)
    p.set_defaults(handler=_disk_reseal)

    p = disk.add_parser("sign-policy", help="customer: sign a PCR policy (current or predicted values)")
    p.add_argument("--key", required=True, metavar="KEY",
                   help="customer policy key (ECDSA P-256 or RSA): a PEM/DER file or a pkcs11: URI")
    add_passphrase_options(p)
    p.add_argument("--pcrs", required=True)
    p.add_argument("--pcr-value", action="append", default=[], metavar="N=HEX")
    p.add_argument("--tcti", default=None, help="read values not given with --pcr-value from this TPM")
    p.add_argument("-o", "--output", dest="policy_output", required=True, metavar="FILE",
                   help="where to write the signed policy")
    add_output_options(p, output_file=False, verbose=False, default="text")
    p.set_defaults(handler=_disk_sign_policy)

    p = disk.add_parser("add-policy", help="store a customer-signed PCR policy in the volume's token")
    p.add_argument("--device", required=True)
    p.add_argument("policy", metavar="FILE")
    add_output_options(p, verbose=False, default="text")
    p.set_defaults(handler=_disk_add_policy)


def _pcr_list(text: str) -> tuple[int, ...]:
    from obelisk.tpm.pcr import parse_pcr_list

    return parse_pcr_list(text)


def _read(path: str, what: str, limit: int) -> bytes:
    from obelisk.core.inputs import read_bounded

    return read_bounded(path, what, limit)


def _pcr_values(items: list[str]) -> dict[int, bytes]:
    from obelisk.tpm.pcr import parse_pcr_values

    return parse_pcr_values(items, "sha256", "--pcr-value")


def _secret_file(path: str, what: str) -> bytes:
    import sys

    if path == "-":
        data = sys.stdin.buffer.read(4097)
    else:
        data = _read(path, what, 4096)
    if len(data) > 4096 or not data.strip():
        from obelisk.core.errors import InputError
        raise InputError(f"{what} must be 1..4096 bytes", source=path)
    return data


def _disk_enroll(args: argparse.Namespace) -> int:
    from obelisk.disk import volume as disk

    key = _secret_file(args.key_file, "key file") if args.key_file else None
    policy_key = None
    if args.policy_key:
        from cryptography.hazmat.primitives import serialization

        from obelisk.core.errors import InputError
        try:
            pub = serialization.load_pem_public_key(_read(args.policy_key, "policy key", 1 << 16))
        except ValueError:
            raise InputError("not a PEM public key", source=args.policy_key) from None
        policy_key = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pcrs = _pcr_list(args.pcrs)
    result = disk.enroll(args.device, pcrs, args.tcti, existing_key=key, format_volume=args.format_volume,
                         values=_pcr_values(args.pcr_value), policy_key=policy_key, recovery=not args.no_recovery)
    data = {"device": args.device, "tpm_keyslot": result.tpm_keyslot, "recovery_keyslot": result.recovery_keyslot,
            "pcrs": list(result.pcrs), "pcr_values": {str(k): v.hex() for k, v in result.values.items()},
            "formatted": result.formatted, "recovery_key": result.recovery_key,
            "signed_policy": policy_key is not None}
    text = (f"{args.device}: TPM key in keyslot {result.tpm_keyslot}, sealed to sha256 PCRs "
            f"{','.join(map(str, result.pcrs))}" + (" (customer-signed policies)" if policy_key else "") + "\n")
    if result.recovery_key:
        text += (f"recovery key (keyslot {result.recovery_keyslot}); write it down now, it is shown only once:\n"
                 f"    {result.recovery_key}\n")
    return emit_result(args, data, text, mode=0o600 if result.recovery_key else 0o644)


def _disk_unlock(args: argparse.Namespace) -> int:
    from obelisk.disk import policy
    from obelisk.disk import volume as disk

    extra = [policy.parse(_read(p, "file", 1 << 20), p) for p in args.signed_policy]
    token = disk.unlock(args.device, args.tcti, name=args.name, test=args.test, extra_policies=extra)
    data = {"device": args.device, "keyslot": token.keyslot, "test": args.test, "opened": True}
    text = (f"{args.device}: the TPM released the key; it opens keyslot {token.keyslot}\n" if args.test
            else f"{args.device}: opened\n")
    return emit_result(args, data, text)


def _disk_reseal(args: argparse.Namespace) -> int:
    from obelisk.disk import volume as disk

    recovery = (disk.normalize_recovery_key(_secret_file(args.recovery_key_file, "recovery key").decode(
        "utf-8", "replace")) if args.recovery_key_file else None)
    token = disk.reseal(args.device, args.tcti, pcrs=_pcr_list(args.pcrs) if args.pcrs else None,
                        recovery_key=recovery, values=_pcr_values(args.pcr_value))
    data = {"device": args.device, "tpm_keyslot": token.keyslot, "pcrs": list(token.sealed.pcrs)}
    return emit_result(args, data, f"{args.device}: resealed to sha256 PCRs {','.join(map(str, token.sealed.pcrs))}, "
                       f"TPM key now in keyslot {token.keyslot}\n")


def _disk_sign_policy(args: argparse.Namespace) -> int:
    from obelisk.cli.signer import passphrase_source
    from obelisk.core import atomic
    from obelisk.disk import policy as policymod
    from obelisk.signer.keys import load_signing_key, sign_tpm_policy
    from obelisk.tpm import device as tpm
    from obelisk.tpm import seal

    key = load_signing_key(args.key, passphrase_source(args))
    pcrs = _pcr_list(args.pcrs)
    values = _pcr_values(args.pcr_value)
    missing = [p for p in pcrs if p not in values]
    if missing:
        if args.tcti is None and not values:
            values = tpm.pcr_values(None, seal.BANK, pcrs)
        else:
            values.update(tpm.pcr_values(args.tcti, seal.BANK, missing))
    values = {p: values[p] for p in pcrs}
    policy = seal.SignedPolicy(pcrs=pcrs, values=values,
                               signature=sign_tpm_policy(key, seal.policy_pcr_digest(pcrs, values)))
    atomic.write_bytes(args.policy_output, policymod.serialize(policy))
    data = {"policy": args.policy_output, "pcrs": list(pcrs),
            "pcr_values": {str(k): v.hex() for k, v in values.items()}}
    return emit_result(args, data, f"signed PCR policy written to {args.policy_output}\n")


def _disk_add_policy(args: argparse.Namespace) -> int:
    from obelisk.disk import policy as policymod
    from obelisk.disk import volume as disk

    policy = policymod.parse(_read(args.policy, "file", 1 << 20), args.policy)
    token = disk.add_signed_policy(args.device, policy)
    return emit_result(args, {"device": args.device, "signed_policies": len(token.signed_policies)},
                       f"{args.device}: {len(token.signed_policies)} signed PCR policies stored\n")
