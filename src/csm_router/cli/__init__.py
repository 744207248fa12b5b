"""The `csm-router` command line, a module for each group of commands."""
