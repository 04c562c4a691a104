"""The node's encrypted /var: LUKS2 volumes and their TPM tokens, the customer-signed PCR policy
record, and the node-side unlock."""
