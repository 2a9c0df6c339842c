"""The `cseg` command line: thin Typer commands over raycseg functions."""
