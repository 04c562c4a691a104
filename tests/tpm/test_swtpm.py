import subprocess

import pytest

from obelisk.core import tools

pytestmark = pytest.mark.swtpm


def test_swtpm_answers_tpm2_tools_and_pytss(swtpm):
    # tpm2-tools, the independent client, reads PCR 0 of the sha256 bank: all zeros after startup
    out = subprocess.run([tools.which("tpm2_pcrread"), "sha256:0"], env={**swtpm.env, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout
    assert "0x0000000000000000000000000000000000000000000000000000000000000000" in out

    from tpm2_pytss import ESAPI, TCTILdr
    with ESAPI(TCTILdr.parse(swtpm.tcti)) as esapi:
        rand = esapi.get_random(8)
    assert len(bytes(rand)) == 8
