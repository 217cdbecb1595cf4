"""Maintenance tools for the course (executing notebooks in place)."""
