"""Benchmarks, each against a baseline in the same run (`make bench`); not collected by pytest."""
