"""The ``leukodx`` command line: thin Typer verbs over the library."""
