"""Attestation: TPM evidence on the node, verification against the build manifest."""
