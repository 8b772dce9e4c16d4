"""ChatPopLocal against LangChain's own standard test suites, on the real SmolLM2 model."""

import langchain_core  # noqa: F401  (a broken install fails here, never skips)
import langchain_tests  # noqa: F401
import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from helpers.waiting import finishes
from pop_local.integrations.langchain import ChatPopLocal

# the embedded default model (ChatPopLocal() without a model), made once per session
pytestmark = pytest.mark.usefixtures("default_model_start")


@pytest.fixture(scope="module")
def default_model_file():
    from pop_local.converter.default_model import default_model_path

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
        from pop_local.runtime.models import smollm2_path

        return smollm2_path()  # the same weights without pop.* keys: a different file

    # A 135M-parameter model run locally: no images, audio, PDFs or provider-specific inputs.
    @property
    def supports_image_inputs(self):
        return False

    @property
    def returns_usage_metadata(self):
        return True

    # The one test that needs the model to decide on its own to call a tool (bind_tools without a
    # tool_choice). ChatPopLocal produces tool calls only when a call is forced (tool_choice "any",
    # "required" or a name: grammar-constrained, tested by the rest of this suite); unforced,
    # SmolLM2-135M answers in text. The suite's own docstring prescribes xfail for models that do not
    # consistently call tools unprompted.
    # strict (pytest.ini): the day the model calls the tool unprompted, the run says so
    @pytest.mark.xfail(reason="unforced tool calls: the model answers in text (see comment)")
    def test_agent_loop(self, model, *args, **kwargs):
        super().test_agent_loop(model, *args, **kwargs)


# --- pop-local specifics the standard suites do not cover ------------------------------------------

@pytest.mark.slow
def test_instances_share_one_loaded_model_and_keep_their_own_pop_settings():
    from pop_local.integrations import _backend

    on = ChatPopLocal(temperature=0, max_tokens=4, min_tokens=0)  # these short prompts pruned too
    off = ChatPopLocal(temperature=0, max_tokens=4, pop=False)
    fewer = ChatPopLocal(temperature=0, max_tokens=4, skip_layers="25-29", min_tokens=0)
    prompt = "The lighthouse keeper kept two logbooks. In the first she wrote"
    a = on.invoke(prompt + " the weather.").response_metadata["pop"]
    b = off.invoke(prompt + " the ships.").response_metadata["pop"]
    c = fewer.invoke(prompt + " the oil.").response_metadata["pop"]
    d = on.invoke(prompt + " the tides.").response_metadata["pop"]
    assert a["active"] and a["pruned_tokens"] > 0 and a["skip_layers"] == default_skip_set()
    assert not b["active"] and b["pruned_tokens"] == 0
    assert c["skip_layers"] == [25, 26, 27, 28, 29] and c["pruned_tokens"] > 0
    assert d["skip_layers"] == default_skip_set()  # back to the file's skip set on the shared model
    target = on._target(None)
    assert target == off._target(None) == fewer._target(None)  # POP settings are per request, not per model
    assert len([k for k in _backend._models if k == target]) == 1


@pytest.mark.slow
def test_concurrent_requests_are_serialised_per_model():
    """Threads sharing one model get the same greedy answers as sequential calls."""
    from concurrent.futures import ThreadPoolExecutor

    chat = ChatPopLocal(temperature=0, max_tokens=12)
    prompts = ["What is the capital of France?", "Name a primary colour.", "What is 2 plus 2?"]
    sequential = [chat.invoke(p).content for p in prompts]
    with ThreadPoolExecutor(3) as pool:
        parallel = list(pool.map(lambda p: chat.invoke(p).content, prompts))
    assert parallel == sequential


def test_missing_model_file_is_a_clear_error(tmp_path):
    from pop_local.errors import PopError

    chat = ChatPopLocal(model=str(tmp_path / "absent.gguf"))  # constructing loads nothing
    with pytest.raises(PopError, match="absent.gguf"):
        chat.invoke("hi")


def test_unknown_forced_tool_is_refused_when_binding():
    from langchain_core.tools import tool

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    with pytest.raises(ValueError, match="not among the bound tools"):
        ChatPopLocal().bind_tools([add], tool_choice="subtract")


@pytest.mark.slow
def test_unicode_arguments_round_trip():
    """A forced call whose argument is non-Latin text the model only has to copy."""
    from langchain_core.tools import tool

    @tool
    def save_name(name: str) -> str:
        """Save a company name."""
        return name

    chat = ChatPopLocal(temperature=0, max_tokens=64).bind_tools([save_name], tool_choice="save_name")
    call = chat.invoke("Save the company name '你好啊集团'.").tool_calls[0]
    assert call["name"] == "save_name" and "你好" in call["args"]["name"]
    from pop_local.integrations import _backend

    parsed = _backend._tool_call([{"function": {"name": "save_name"}}], '{"name": "こんにちは株式会社"}')
    assert '"\\u3053' in parsed["function"]["arguments"] or "こんにちは" in parsed["function"]["arguments"]
    from pop_local.integrations.langchain import _lc_tool_call

    assert _lc_tool_call(parsed)["args"] == {"name": "こんにちは株式会社"}


def default_skip_set():
    """The embedded default model's skip set (chosen by the converter's quality budget)."""
    from pop_local import read_pop_metadata
    from pop_local.converter.default_model import default_model_path

    return list(read_pop_metadata(default_model_path()).skip_layers)


@pytest.mark.slow
def test_an_abandoned_stream_releases_the_model():
    """A client that stops reading a stream (break, close, or an async stream it drops) must not keep
    the model: the next request runs."""
    import asyncio

    chat = ChatPopLocal(temperature=0, max_tokens=64)
    for _chunk in chat.stream("Tell me a long story about a lighthouse."):
        break  # the generator is dropped here
    stream = chat.stream("Tell me a long story about a canal.")
    next(stream)
    stream.close()
    assert finishes(lambda: chat.invoke("What is 2 plus 2?").content)

    async def abandon_async():
        stream = chat.astream("Tell me a long story about a mill.")
        await stream.__anext__()
        await stream.aclose()

    asyncio.run(abandon_async())
    assert finishes(lambda: chat.invoke("What is 3 plus 3?").content)
