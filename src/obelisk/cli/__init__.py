"""The command line: parse arguments, call a component, render. No logic of its own."""
