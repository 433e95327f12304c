"""The numbaconv command line (installed as the package ``numbaconv_cli``).

Parses arguments, calls the library, renders with rich. No logic of its own.
"""
