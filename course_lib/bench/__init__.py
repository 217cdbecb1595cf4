"""Benchmarks behind ``python -m course_lib bench NAME``: each module has
``add_arguments(parser)`` and ``run(args)``, prints a table and saves a PNG."""
