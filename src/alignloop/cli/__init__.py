"""The `alignloop` command line: one Typer app, one module per group of stage commands."""
