"""Bytes for each output format. Pure functions: same settings in, same bytes out."""
