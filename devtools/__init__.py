"""Development-only tools, outside the services' wheel and image: private PostgreSQL and Redis servers (for `make
run` and the tests), `make run` and `make cluster` themselves, and token minting for local use. They import the
services' shared package; nothing in the services imports them (`make check` holds that: import-linter)."""
