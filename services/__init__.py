"""sparring.services: the CLI (and, later, the REST API and dashboard)."""
