"""`obelisk keys generate`, `obelisk ima sign`, `obelisk ima verify`."""

from __future__ import annotations

import argparse
import functools
import os
from typing import TYPE_CHECKING

from obelisk.cli.common import add_output_options, add_quiet, emit_report, emit_result
from obelisk.cli.main import subcommand_group

if TYPE_CHECKING:
    from obelisk.signer.keys import PassphraseSource

KEY_TYPES = ("rsa-2048", "rsa-3072", "rsa-4096", "ecdsa-p256", "ecdsa-p384")


def add_passphrase_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--passphrase-env", metavar="VAR", help="read the key passphrase from environment variable VAR")
    group.add_argument("--passphrase-file", metavar="FILE", help="read the key passphrase from the first line of FILE")


def passphrase_source(args: argparse.Namespace) -> PassphraseSource | None:
    from obelisk.signer.keys import PassphraseSource

    if args.passphrase_env or args.passphrase_file:
        return PassphraseSource(env=args.passphrase_env, file=args.passphrase_file)
    return None


def register(sub: argparse._SubParsersAction) -> None:
    keys = subcommand_group(sub, "keys", "customer keys: CA, IMA signing key, disk policy key, Secure Boot keys")
    gen = keys.add_parser("generate", help="create a customer CA, an IMA signing key, a disk policy key and the "
                                           "Secure Boot PK, KEK and db, each with a certificate from the CA")
    gen.add_argument("--out", required=True, metavar="DIR",
                     help="directory for ca.{key,pem,der}, ima.{key,pem,der}, disk-policy.{key,pem}, "
                          "pk/kek/db.{key,pem}")
    gen.add_argument("--type", default="rsa-2048", choices=KEY_TYPES, help="key algorithm (default rsa-2048)")
    gen.add_argument("--organization", default="obelisk customer", help="organization name in the certificates")
    add_passphrase_options(gen)
    add_output_options(gen)
    gen.set_defaults(handler=_keys_generate)

    ima = subcommand_group(sub, "ima", "IMA signatures, policies and measurement lists")
    sign = ima.add_parser("sign", help="sign every regular file under PATH (or, with --oci, in the layers of the OCI "
                                       "image layout PATH) with IMA v2 signatures")
    sign.add_argument("--key", required=True, help="private key file (PEM/DER) or pkcs11: URI")
    sign.add_argument("--cert", required=True, help="the key's X.509 certificate (PEM or DER)")
    sign.add_argument("--hash", default="sha256", choices=("sha256", "sha384", "sha512"))
    sign.add_argument("--jobs", type=int, default=None, help="worker processes (default: every core)")
    sign.add_argument("--xattr-file", metavar="OUT",
                      help="write nothing to the files; write signatures in getfattr --dump format to OUT")
    sign.add_argument("--oci", action="store_true",
                      help="each PATH is an OCI image layout: put a security.ima PAX record on every regular file of "
                           "every layer and update the digests (one process; see docs/oci.md)")
    sign.add_argument("paths", nargs="+", metavar="PATH")
    add_passphrase_options(sign)
    add_quiet(sign)
    add_output_options(sign)
    sign.set_defaults(handler=_ima_sign)

    verify = ima.add_parser("verify", help="check every regular file's IMA signature against trusted certificates")
    verify.add_argument("--cert", required=True, action="append", help="trusted certificate (repeatable, PEM or DER)")
    verify.add_argument("--xattr-file", metavar="FILE", help="read signatures from a getfattr --dump file")
    verify.add_argument("--jobs", type=int, default=None)
    verify.add_argument("paths", nargs="+", metavar="PATH")
    add_quiet(verify)
    add_output_options(verify)
    verify.set_defaults(handler=_ima_verify)


def _keys_generate(args: argparse.Namespace) -> int:
    from obelisk.signer import keygen

    source = passphrase_source(args)
    secret = source.read() if source else None
    made = keygen.generate(args.out, args.type, organization=args.organization, passphrase=secret)
    return emit_result(args, made.to_json(), lambda d: (
        f"customer CA:      {d['ca_cert']} (key {d['ca_key']}, mode 0600)\n"
        f"IMA signing key:  {d['ima_key']} (mode 0600)\n"
        f"IMA certificate:  {d['ima_cert']} / {d['ima_cert_der']} (key id {d['ima_key_id']})\n"
        f"disk policy key:  {d['policy_key']} (certificate {d['policy_cert']})\n"
        f"Secure Boot keys: PK {d['secure_boot_pk_cert']}, KEK {d['secure_boot_kek_cert']}, "
        f"db {d['secure_boot_db_cert']} (keys mode 0600; RSA-2048 whatever --type says: "
        "UEFI firmware verifies RSA-2048)\n"
        f"enrolling them:   {d['secure_boot_enroll_dir']} ({{PK,KEK,db}}.{{der,esl,auth}}; see docs/secure-boot.md)\n"))


def _ima_sign(args: argparse.Namespace) -> int:
    from obelisk.core.errors import InputError
    from obelisk.core.forkpool import ForkedCall
    from obelisk.signer.keys import load_signing_key, read_signing_certificate
    from obelisk.signer.sign import sign_tree

    if args.jobs is not None and args.jobs < 1:
        raise InputError("--jobs must be at least 1")
    if args.oci:
        return _ima_sign_oci(args)
    for path in args.paths:
        if os.path.isfile(os.path.join(path, "oci-layout")):
            raise InputError("is an OCI image layout: add --oci to sign the files in its layers "
                             "(without it, security.ima would be set on its blob files)", source=path)
    # The certificate is read in a forked process: importing cryptography.x509 costs 40 ms of CPU, done
    # there on another core while this process loads the key and starts the workers. sign_tree proves the
    # key against the certificate before it writes anything, so OpenSSL's slow RSA check is skipped.
    with ForkedCall(functools.partial(read_signing_certificate, args.cert)) as cert:
        key = load_signing_key(args.key, passphrase_source(args), check_rsa_primes=False)
        in_process = args.key.startswith("pkcs11:")  # token sessions do not survive fork
        summary = sign_tree(args.paths, key, cert.result, hash_name=args.hash, jobs=args.jobs,
                            xattr_file=args.xattr_file, quiet=args.quiet, cert_source=args.cert,
                            in_process=in_process)
    skipped = ", ".join(f"{n} {k}" for k, n in sorted(summary.skipped.items())) or "none"
    where = f"signatures written to {summary.xattr_file}" if summary.xattr_file else "security.ima set on each file"
    return emit_result(args, summary.to_json(),
                       f"signed {summary.signed} files ({summary.hash_algo}, key id {summary.key_id}); "
                       f"skipped: {skipped}; {where}\n")


def _ima_sign_oci(args: argparse.Namespace) -> int:
    from obelisk.core.errors import InputError
    from obelisk.signer.keys import load_certificate, load_signing_key
    from obelisk.signer.oci_sign import sign_layout

    if args.xattr_file:
        raise InputError("--xattr-file does not apply to --oci: the signatures go into the layers")
    key = load_signing_key(args.key, passphrase_source(args), check_rsa_primes=False)
    cert = load_certificate(args.cert)
    summaries = [sign_layout(path, key, cert, hash_name=args.hash, cert_source=args.cert) for path in args.paths]
    data = {"layouts": [s.to_json() for s in summaries]}
    return emit_result(args, data, lambda d: "".join(
        f"{s['layout']}: signed {s['signed']} files in {s['layers']} layers of {s['images']} images "
        f"({s['hash']}, key id {s['key_id']}); skipped: "
        f"{', '.join(f'{n} {k}' for k, n in s['skipped'].items()) or 'none'}; "
        f"{s['artifacts']} non-image manifests kept; {s['removed_blobs']} replaced blobs removed\n"
        for s in d["layouts"]))


def _ima_verify(args: argparse.Namespace) -> int:
    from obelisk.signer.keys import load_certificate
    from obelisk.signer.verify import verify_tree

    certs = [(c, load_certificate(c)) for c in args.cert]
    report = verify_tree(args.paths, certs, xattr_file=args.xattr_file, jobs=args.jobs, quiet=args.quiet)
    return emit_report(args, report)
