"""Imported by nothing of the package: tests check whether a command imported it (sys.modules)."""
