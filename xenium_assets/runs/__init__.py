"""Runs a user starts from the command line on the project's instance (the demo, a new label reference): each
launches the named jobs of ``defs`` and reports what they wrote. Dagster's layer, like ``defs`` and the CLI."""
