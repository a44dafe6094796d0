"""One module per pipeline stage, each a pure `run(params, paths) -> metrics`."""
