"""The provider conformance suite (every rule of the execution contract) against the arq provider, on a real Redis."""

from __future__ import annotations

import pytest

from plait.providers.arq import ArqWorkflowProvider
from plait.testing import ProviderContract


class TestArqProvider(ProviderContract):
    @pytest.fixture
    def provider(self, redis_url: str) -> ArqWorkflowProvider:
        return ArqWorkflowProvider(redis_url, stop_grace=self.stop_grace, stall_interval=2.0)
