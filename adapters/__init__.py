"""The LangChain and LlamaIndex integrations of clara-plugins (installed as ``clara_plugins.adapters``).

Each framework has its own module, imported only when used, so ``import clara_plugins`` pulls in neither:

- ``clara_plugins.adapters.langchain`` (extra ``langchain``): ``ClaraRetriever``, ``ClaraDocumentCompressor``,
  ``ClaraChatModel``, ``ClaraContextPacker`` and ``ClaraVectorStore``.
- ``clara_plugins.adapters.llama_index`` (extra ``llama-index``): ``ClaraRetriever``, ``ClaraNodePostprocessor``,
  ``ClaraLLM``, ``ClaraSynthesizer``, ``ClaraChatEngine``, ``make_query_engine`` and ``make_chat_engine``.
- here, framework-free: ``PromptError`` and ``add_prompt_template`` (how stuffed prompts are understood).

The classes are thin conversions between framework objects and the core ``ClaraRAG`` facade; they never paste
document text into a prompt: the generator reads the documents' compressed memories.
"""

from __future__ import annotations

# This folder sits at the top of the repository but is installed as clara_plugins.adapters. Imported under any
# other name (a stray ``import adapters`` from the repository root), it would shadow the PyPI package ``adapters``
# (AdapterHub) and half-work; refuse clearly instead.
if not __name__.startswith("clara_plugins."):
    msg = (
        f"this package must be imported as clara_plugins.adapters, not {__name__!r}: "
        "use `import clara_plugins.adapters` (install the project with `pip install -e .`)"
    )
    raise ImportError(msg)

from clara_plugins.adapters._stuffed import PromptError, add_prompt_template  # framework-free

__all__ = ["PromptError", "add_prompt_template"]
