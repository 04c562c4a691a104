"""IMA policies (render, lint) and runtime measurement lists (parse, replay, verify)."""
