"""ChatPopLocal against LangChain's own standard test suites, on the real SmolLM2 model."""

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_tests.integration_tests import ChatModelIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402

from pop_local.integrations.langchain import ChatPopLocal  # noqa: E402


@pytest.fixture(scope="module")
def default_model_file():
    from pop_local.models import default_model_path

    return default_model_path()


class TestChatPopLocalUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self):
        return ChatPopLocal

    @property
    def chat_model_params(self):
        return {"model": "SmolLM2-135M-Instruct.pop.gguf", "temperature": 0}

    @property
    def model_override_value(self):
        return "another.gguf"


@pytest.mark.slow
class TestChatPopLocalIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self):
        return ChatPopLocal

    @property
    def chat_model_params(self):
        # the embedded default (SmolLM2-135M-Instruct, POP-ready), greedy, short replies
        return {"temperature": 0, "max_tokens": 64, "seed": 0}

    @property
    def model_override_value(self):
        from pop_local.models import smollm2_path

        return smollm2_path()  # the same weights without pop.* keys: a different file

    # A 135M-parameter model run locally: no images, audio, PDFs or provider-specific inputs.
    @property
    def supports_image_inputs(self):
        return False

    @property
    def returns_usage_metadata(self):
        return True
