"""obelisk: immutable, IMA-signed, hardened Kubernetes node images, and proof that running nodes still match them."""

__version__ = "0.1.0"
