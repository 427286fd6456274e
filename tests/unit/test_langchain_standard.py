"""The langchain-tests standard suites, run offline against the tiny model and an in-memory store.

Features ClaraChatModel does not have are declared off through the suites' properties: tool calling and
structured output (the properties default to off because ``bind_tools`` / ``with_structured_output`` are not
overridden), image/audio/PDF inputs (off by default), and per-call model override (``supports_model_override``).
Usage metadata is on: prompt positions and answer tokens are reported.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests, RetrieversIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from clara_plugins.adapters.langchain import ClaraChatModel, ClaraRetriever
from tests.unit.test_langchain import build_rag


@pytest.fixture(scope="module")
def standard_rag(tiny_model):
    return build_rag(tiny_model)


class _WithRag:
    """Hands the module's ClaraRAG to the suites' constructor parameters (they are properties, not fixtures)."""

    _rag: Any = None

    @pytest.fixture(autouse=True)
    def _bind_rag(self, standard_rag):
        type(self)._rag = standard_rag


class TestClaraRetrieverStandard(_WithRag, RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[ClaraRetriever]:
        return ClaraRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"rag": self._rag, "k": 2}

    @property
    def retriever_query_example(self) -> str:
        return "What is the capital of France?"


class _ChatParams(_WithRag):
    @property
    def chat_model_class(self) -> type[ClaraChatModel]:
        return ClaraChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"rag": self._rag, "model": "clara-tiny"}

    @property
    def supports_model_override(self) -> bool:
        return False  # one ClaraChatModel wraps one loaded model; model= per call is refused


class TestClaraChatModelUnit(_ChatParams, ChatModelUnitTests):
    pass


class TestClaraChatModelIntegration(_ChatParams, ChatModelIntegrationTests):
    pass
