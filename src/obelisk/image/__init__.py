"""Image pipeline: one declarative spec to a signed, reproducible node image that boots and proves itself."""
