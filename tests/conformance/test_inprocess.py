"""The provider conformance suite (every rule of the execution contract) against the in-process provider."""

import pytest

from plait.providers.inprocess import InProcessWorkflowProvider
from plait.testing import ProviderContract


class TestInProcessProvider(ProviderContract):
    @pytest.fixture
    def provider(self) -> InProcessWorkflowProvider:
        return InProcessWorkflowProvider(stop_grace=self.stop_grace)
