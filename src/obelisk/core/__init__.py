"""Shared pieces every component uses: the result model, errors, atomic output, external tools, progress."""
