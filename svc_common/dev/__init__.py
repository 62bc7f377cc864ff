"""Development-only helpers, never imported by the services: private PostgreSQL and Redis servers (for `make run`
and the tests), `make run` itself, and token minting for local use."""
