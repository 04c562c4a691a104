"""`kernel build` refuses bad input before any compiler runs (one line, exit 2)."""

from __future__ import annotations

from obelisk.kernel_hardening.build import BUILD_ENV, build_key, intended_config


def test_bad_ca_and_bad_config_are_one_line(obelisk_cli, tmp_path, kernel_tree):
    cfg = tmp_path / "c.config"
    cfg.write_text("CONFIG_MODULES=n\n")
    not_ca = tmp_path / "ca.pem"
    not_ca.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    proc = obelisk_cli("kernel", "build", "--kernel-source", str(kernel_tree), "--config", str(cfg),
                       "--ca", str(not_ca), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not a PEM X.509 certificate" in proc.stderr
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\n")
    proc = obelisk_cli("kernel", "build", "--kernel-source", str(kernel_tree), "--config", str(passwd),
                       "--ca", str(not_ca), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and "not a kernel configuration" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_ca_path_is_relative_and_key_covers_inputs():
    text = intended_config('CONFIG_SYSTEM_TRUSTED_KEYS="/home/me/ca.pem"\nCONFIG_MODULES=n\n')
    assert 'CONFIG_SYSTEM_TRUSTED_KEYS="obelisk-ca.pem"' in text and "/home/me" not in text
    base = build_key("src", text, b"ca")
    assert base != build_key("src2", text, b"ca")
    assert base != build_key("src", text + "CONFIG_X=y\n", b"ca")
    assert base != build_key("src", text, b"other ca")
    assert BUILD_ENV["KBUILD_BUILD_TIMESTAMP"] and BUILD_ENV["KBUILD_BUILD_USER"] == "obelisk"
