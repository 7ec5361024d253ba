"""The PostgreSQL journal: the conformance suite, processes sharing runs, a lost server."""

from __future__ import annotations

import uuid

import pytest

from typedmesh.journal import Journal, PostgresJournal
from typedmesh.testing.journal_conformance import JournalConformance
from typedmesh.testing.servers import drop_schema


class TestPostgresJournal(JournalConformance):
    """Each journal its own fresh schema; ``reopen`` is a second connection to it."""

    @pytest.fixture(autouse=True)
    def _server(self, postgres_url: str) -> None:
        self.url = postgres_url
        self.schemas: list[str] = []

    def make_journal(self) -> Journal:
        schema = f"conf_{uuid.uuid4().hex[:12]}"
        self.schemas.append(schema)
        return PostgresJournal(self.url, schema=schema)

    def reopen(self, journal: Journal) -> Journal:
        assert isinstance(journal, PostgresJournal)
        return PostgresJournal(self.url, schema=journal.schema)

    def teardown_method(self, method: object = None) -> None:
        super().teardown_method(method)
        for schema in getattr(self, "schemas", []):
            drop_schema(self.url, schema)
