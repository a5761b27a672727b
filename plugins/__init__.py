"""Built-in plugins.  Loaded by file path, never imported as a package."""
