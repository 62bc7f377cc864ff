"""Mutation testing (`make mutants`): the SQL mutants; mutmut covers the pure modules (pyproject [tool.mutmut])."""
