"""Compliance reports: one result model rendered as HTML, JSON, JUnit, SARIF, OSCAL, CKL/CKLB, CSV;
signed statements over rendered reports; drift between two scans."""
