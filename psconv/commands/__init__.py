"""One module per CLI command; :mod:`psconv.cli` wires them together."""
