"""Driver: config, data, wiring of components, command-line commands."""
