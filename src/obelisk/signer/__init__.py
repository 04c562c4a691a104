"""IMA signing with customer keys (PEM files or PKCS#11 tokens): keys, signatures, trees."""
