"""TPM 2.0 knowledge in one place: algorithm ids, quote and event-log formats, PCR arithmetic,
sealing, device access through tpm2-pytss, and the swtpm software TPM."""
