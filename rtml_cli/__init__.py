"""The ``rtml`` command line: entry point only, it wires settings into the domain packages."""
