from __future__ import annotations

import pytest

from tests.reports import samples


@pytest.fixture
def results_files(tmp_path):
    """Three results files for one node: CIS/STIG scan, kernel check, attestation."""
    return samples.write_all(tmp_path)


@pytest.fixture
def bundle(results_files):
    from obelisk.reports.model import load_bundle

    return load_bundle(results_files)


@pytest.fixture(scope="session")
def stig_xccdf(shared_dir):
    return shared_dir / "reference" / "disa" / "U_Kubernetes_STIG_V1R9_Manual-xccdf.xml"


@pytest.fixture(scope="session")
def cci_list(shared_dir):
    return shared_dir / "reference" / "disa" / "U_CCI_List_2023-06-07.xml"
