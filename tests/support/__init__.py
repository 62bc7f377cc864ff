"""Test support, imported by the tests and the benchmarks (no test module imports another): tokens and callers
(helpers), service processes and their environments (servers), whole event systems and subscriptions (events)."""
