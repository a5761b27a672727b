"""Command-line programs: small main(argv) -> int functions over the library."""
