"""Fixtures for the memory tests: a service on tmp dirs, a word tokenizer, a secret scanner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from memory.service import MemoryService
from memory.settings import LevelTokens, MemorySettings
from tests.memory.helpers import ServiceFactory, count_words, scan_secrets


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "memory"


@pytest.fixture
def make_service(
    tmp_path: Path, user_dir: Path, workspace: Path
) -> Iterator[ServiceFactory]:
    made: list[MemoryService] = []

    def make(
        *,
        session_id: str = "s1",
        capacities: tuple[int, int, int] = (1500, 1500, 1000),
        budgets: tuple[int, int, int] = (400, 800, 600),
        **kw: object,
    ) -> MemoryService:
        settings = MemorySettings(
            capacities=LevelTokens(
                user=capacities[0], project=capacities[1], session=capacities[2]
            ),
            index_budgets=LevelTokens(user=budgets[0], project=budgets[1], session=budgets[2]),
            distill_max_tokens=kw.pop("distill_max_tokens", 1024),  # type: ignore[arg-type]
        )
        svc = MemoryService(
            user_dir=kw.pop("user_dir", user_dir),  # type: ignore[arg-type]
            workspace=kw.pop("workspace", workspace),  # type: ignore[arg-type]
            db_path=kw.pop("db_path", tmp_path / "data" / "keyless.db"),  # type: ignore[arg-type]
            session_id=session_id,
            count_tokens=count_words,
            scan_secrets=kw.pop("scan", scan_secrets),  # type: ignore[arg-type]
            settings=settings,
        )
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.close()


@pytest.fixture
def service(make_service: ServiceFactory) -> MemoryService:
    return make_service()
