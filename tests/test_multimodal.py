"""Images through llama.cpp's mtmd with POP: image tokens run pruned like prompt text, the last prompt
token at full depth, the KV cache of the layers POP keeps equal to the full model's.

No vision-language GGUF with its projector is installable offline, so real language models (SmolLM2-135M,
llama; Gemma-3-270M, gemma3 with non-causal image batches) and a tiny generated qwen2vl model (M-RoPE)
are paired with random-weight projectors (tests/helpers/mmproj.py): the mechanics are real, the image
"content" is noise.
"""

import numpy as np
import pytest

from helpers.mmproj import ask, check_kv_against_full, image_tokens, mmproj, png_bytes, write_png
from pop_local.errors import PopError, PopSettingError
from pop_local.runtime import upstream
from pop_local.runtime.multimodal import image_content, image_url

SIDE, PATCH = 48, 4             # the mlp projector: (48/4)^2 = 144 image tokens
N_UBATCH = 64                   # smaller than one image: it is decoded in three ubatches


@pytest.fixture(scope="module")
def smol_vlm(smollm2):
    """SmolLM2-135M with a random mlp projector, n_batch = n_ubatch = 64, POP on 20-29, no prompt minimum."""
    from pop_local import PopLlama

    llm = PopLlama(smollm2, skip_layers="20-29", min_tokens=0, n_ctx=2048, n_batch=N_UBATCH, n_ubatch=N_UBATCH,
                   mmproj=mmproj("mlp", 576, image_size=SIDE, patch_size=PATCH), verbose=False)
    yield llm
    llm.close()


def test_image_tokens_run_pruned_and_only_the_last_prompt_token_runs_full(smol_vlm):
    delta, reply = ask(smol_vlm, png_bytes())
    n_image = image_tokens("mlp", SIDE, PATCH)
    stats = smol_vlm.pop_stats()
    assert delta["image_tokens"] == delta["image_pruned_tokens"] == n_image
    # the whole prompt (text before and after the image, the image) ran pruned but its last token
    assert delta["full_tokens"] == 1 and delta["pruned_tokens"] == stats["last_prefill_tokens"] - 1
    assert stats["last_prefill_tokens"] > n_image and stats["last_prefill_ms"] > 0 and reply


def test_the_first_answer_token_is_exact_on_the_pruned_cache(smol_vlm):
    """The last prompt token ran at full depth: its logits equal a single full decode step of that token
    on the cache the pruned prompt left."""
    import llama_cpp

    ask(smol_vlm, png_bytes())
    got = upstream.output_logits(smol_vlm)
    n = smol_vlm.n_tokens
    last = int(smol_vlm.input_ids[n - 1])
    upstream.forget_after(smol_vlm, n - 1)
    batch = llama_cpp.llama_batch_get_one((llama_cpp.llama_token * 1)(last), 1)
    # llama_batch_get_one takes positions from the cache: the next one is n - 1
    assert llama_cpp.llama_decode(smol_vlm.ctx, batch) == 0
    want = upstream.output_logits(smol_vlm)
    assert np.array_equal(got, want)


def test_kept_layers_hold_the_full_models_kv_for_an_image_larger_than_a_ubatch(smol_vlm):
    assert image_tokens("mlp", SIDE, PATCH) > N_UBATCH
    check_kv_against_full(smol_vlm, png_bytes())


def test_two_images_in_one_message_and_a_second_turn(smol_vlm):
    a, b = png_bytes(seed=1), png_bytes(seed=2)
    n_image = image_tokens("mlp", SIDE, PATCH)
    delta, _ = ask(smol_vlm, a, b)
    assert delta["image_tokens"] == delta["image_pruned_tokens"] == 2 * n_image and delta["full_tokens"] == 1
    # a conversation: the handler evaluates it whole every turn (upstream keeps no prefix across images)
    messages = [{"role": "user", "content": image_content("What is this?", [a])},
                {"role": "assistant", "content": "Colours."},
                {"role": "user", "content": image_content("And this one?", [b])}]
    before = smol_vlm.pop_stats()
    smol_vlm.create_chat_completion(messages=messages, max_tokens=1, temperature=0)
    after = smol_vlm.pop_stats()
    assert after["image_pruned_tokens"] - before["image_pruned_tokens"] == 2 * n_image
    assert after["full_tokens"] - before["full_tokens"] == 1
    check_kv_against_full(smol_vlm, a, b)


def test_a_prompt_under_the_minimum_runs_the_full_model_images_included(smol_vlm):
    _, _ = ask(smol_vlm, png_bytes())
    n_prompt = smol_vlm.pop_stats()["last_prefill_tokens"]
    smol_vlm.min_tokens = n_prompt + 1
    try:
        delta, _ = ask(smol_vlm, png_bytes())
        assert delta["short_prompts"] == 1 and delta["pruned_tokens"] == 0 and delta["image_pruned_tokens"] == 0
        assert delta["image_tokens"] == image_tokens("mlp", SIDE, PATCH)
        smol_vlm.min_tokens = n_prompt  # N tokens: pruned
        delta, _ = ask(smol_vlm, png_bytes())
        assert delta["short_prompts"] == 0 and delta["pruned_tokens"] == n_prompt - 1
    finally:
        smol_vlm.min_tokens = 0


def test_a_text_request_after_an_image_request_is_a_plain_prompt(smol_vlm):
    ask(smol_vlm, png_bytes())
    before = smol_vlm.pop_stats()
    smol_vlm.create_chat_completion(messages=[{"role": "user", "content": "Say hello."}], max_tokens=1)
    after = smol_vlm.pop_stats()
    assert after["image_tokens"] == before["image_tokens"]
    assert after["full_tokens"] - before["full_tokens"] == 1


def test_gemma3_non_causal_image_batch_is_pruned_as_a_whole(gemma3):
    """Gemma 3's image tokens attend to each other both ways (mtmd turns causal attention off for the
    chunk, which must then fit one ubatch): with no outputs in it, the whole batch runs pruned."""
    from pop_local import PopLlama

    llm = PopLlama(gemma3, skip_layers="12-17", min_tokens=0, n_ctx=1024, chat_format="llava-1-5",
                   mmproj=mmproj("gemma3", 640, image_size=32, patch_size=4), verbose=False)
    try:
        delta, _ = ask(llm, png_bytes())
        assert delta["image_tokens"] == delta["image_pruned_tokens"] == image_tokens("gemma3", 32, 4) == 16
        assert delta["full_tokens"] == 1
        check_kv_against_full(llm, png_bytes())
    finally:
        llm.close()


def test_qwen2vl_mrope_positions_are_unchanged():
    """A generated qwen2vl model (M-RoPE: mtmd gives image tokens 4-wide positions): the kept layers' K,
    rotated by those positions, equal the full model's."""
    from helpers.tiny_models import tiny_model
    from pop_local import PopLlama

    llm = PopLlama(tiny_model("qwen2vl"), skip_layers="2-3", min_tokens=0, n_ctx=1024,
                   mmproj=mmproj("mlp", 128, image_size=SIDE, patch_size=PATCH), verbose=False)
    try:
        delta, _ = ask(llm, png_bytes())
        assert delta["image_tokens"] == delta["image_pruned_tokens"] == image_tokens("mlp", SIDE, PATCH)
        check_kv_against_full(llm, png_bytes())
    finally:
        llm.close()


def test_bad_projector_and_images_are_one_clear_error(smollm2, tmp_path):
    from pop_local import PopLlama

    with pytest.raises(PopSettingError, match="mmproj: .*no such file"):
        PopLlama(smollm2, mmproj=str(tmp_path / "missing.gguf"), verbose=False)
    wrong_width = mmproj("mlp", 128, image_size=SIDE, patch_size=PATCH)  # made for a 128-wide model
    with pytest.raises(PopSettingError, match="mmproj: "):
        PopLlama(smollm2, mmproj=wrong_width, n_ctx=512, verbose=False)
    with pytest.raises(PopError, match="cannot read the image"):
        image_url(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(PopError, match="not a PNG, JPEG, GIF or BMP image"):
        image_url(tmp_path / "notes.txt")
    assert image_url(write_png(tmp_path / "a.png")).startswith("data:image/png;base64,")


def test_chat_command_takes_images_and_reports_image_tokens(smollm2, tmp_path):
    from click.testing import CliRunner

    from pop_local.apps.cli import cli

    picture = write_png(tmp_path / "a.png")
    proj = mmproj("mlp", 576, image_size=SIDE, patch_size=PATCH)
    args = ["chat", smollm2, "--skip-layers", "20-29", "--pop-min-tokens", "0", "--mmproj", proj, "--max-tokens", "2",
            "--temperature", "0", "--image", picture]
    lines = f"What is this?\n/image {tmp_path / 'missing.png'}\n/image {picture}\nAnd this?\n"
    result = CliRunner().invoke(cli, args, input=lines)
    assert result.exit_code == 0, result.output
    n = image_tokens("mlp", SIDE, PATCH)
    assert f"{n} of {n} image tokens pruned" in result.output  # the first turn
    assert f"{2 * n} of {2 * n} image tokens pruned" in result.output  # the second: both images, re-evaluated
    assert "missing.png: cannot read the image" in result.output
    # without a projector, --image is a usage error before anything loads; a bad image is one line
    result = CliRunner().invoke(cli, ["chat", smollm2, "--image", picture], input="")
    assert result.exit_code == 2 and "--mmproj" in result.output
    result = CliRunner().invoke(cli, ["chat", smollm2, "--mmproj", proj, "--image", str(tmp_path / "x.png")], input="")
    assert result.exit_code == 1 and "x.png: cannot read the image" in result.output


def test_server_takes_image_url_parts(smollm2):
    import json
    import urllib.request

    from helpers.serve_process import serving

    proj = mmproj("mlp", 576, image_size=SIDE, patch_size=PATCH)
    body = {"messages": [{"role": "user", "content": image_content("What is this?", [png_bytes()])}],
            "max_tokens": 2, "temperature": 0}
    with serving(smollm2, "--skip-layers", "20-29", "--pop-min-tokens", "0", "--mmproj", proj) as (port, _):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        reply = json.load(urllib.request.urlopen(request, timeout=300))
        stats = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/pop/stats", timeout=60))
    n = image_tokens("mlp", SIDE, PATCH)
    assert reply["choices"][0]["message"]["content"] is not None
    assert stats["image_tokens"] == stats["image_pruned_tokens"] == n
    assert reply["usage"]["prompt_tokens"] > n


def test_langchain_and_llama_index_pass_image_blocks(smollm2, tmp_path):
    from langchain_core.messages import HumanMessage
    from llama_index.core.base.llms.types import ChatMessage, ImageBlock, TextBlock

    from pop_local.integrations.langchain import ChatPopLocal
    from pop_local.integrations.llama_index import PopLocalLLM

    proj = mmproj("mlp", 576, image_size=SIDE, patch_size=PATCH)
    n = image_tokens("mlp", SIDE, PATCH)
    settings = dict(model=smollm2, skip_layers="20-29", min_tokens=0, mmproj=proj, temperature=0, max_tokens=1)
    import base64

    picture = base64.b64encode(png_bytes()).decode()
    message = HumanMessage(content=[{"type": "image", "source_type": "base64", "data": picture,
                                     "mime_type": "image/png"},
                                    {"type": "text", "text": "What is this?"}])
    pop = ChatPopLocal(**settings).invoke([message]).response_metadata["pop"]
    assert pop["image_tokens"] == pop["image_pruned_tokens"] == n and pop["full_tokens"] == 1

    path = write_png(tmp_path / "b.png", seed=3)
    raw = PopLocalLLM(**settings).chat([ChatMessage(role="user", blocks=[ImageBlock(path=path),
                                                                         TextBlock(text="And this?")])]).raw
    assert raw["pop"]["image_tokens"] == raw["pop"]["image_pruned_tokens"] == n

    # a model loaded without a projector: one clear error, nothing runs
    with pytest.raises(PopError, match="without a projector: set mmproj"):
        ChatPopLocal(model=smollm2, temperature=0, max_tokens=2).invoke([message])


def test_eval_answers_with_images(smollm2, tmp_path):
    """An answer set whose items carry images (relative to the set's file): the command a real VLM would
    be evaluated with, run here on the generated projector (mechanics only)."""
    import json

    from click.testing import CliRunner

    from pop_local.apps.cli import cli

    write_png(tmp_path / "one.png", seed=4)
    data = tmp_path / "vqa.jsonl"
    data.write_text(json.dumps({"group": "short", "id": "a", "prompt": "What colour dominates?", "images": ["one.png"]})
                    + "\n" + json.dumps({"group": "long", "id": "b", "prompt": "Describe it.", "images": ["one.png"]})
                    + "\n")
    proj = mmproj("mlp", 576, image_size=SIDE, patch_size=PATCH)
    out = tmp_path / "eval.json"
    args = ["eval", smollm2, "--skip-layers", "20-29", "--pop-min-tokens", "0", "--ctx", "", "--passkey", "",
            "--answers", "--data", str(data), "--answer-tokens", "4", "--json", str(out)]
    result = CliRunner().invoke(cli, args + ["--mmproj", proj])
    assert result.exit_code == 0, result.output
    answers = json.loads(out.read_text())["answers"]
    assert answers["settings"]["full"]["short"]["identical"] == 1.0 and set(answers["replies"]["pop"]) == {"a", "b"}
    result = CliRunner().invoke(cli, args)  # no projector: one line, exit 1
    assert result.exit_code == 1 and "without a projector" in result.output
    data.write_text(json.dumps({"prompt": "What?", "images": ["missing.png"]}) + "\n")
    result = CliRunner().invoke(cli, args + ["--mmproj", proj])
    assert result.exit_code == 1 and "vqa.jsonl:1: no such image file" in result.output


def test_bench_image_measures_an_image_prefill(smollm2, tmp_path):
    import json

    from click.testing import CliRunner

    from pop_local.apps.cli import cli

    proj = mmproj("mlp", 576, image_size=SIDE, patch_size=PATCH)
    out = tmp_path / "image.json"
    args = ["bench", smollm2, "--skip-layers", "20-29", "--pop-min-tokens", "0", "--repeats", "1", "--image", "64x48"]
    result = CliRunner().invoke(cli, args + ["--mmproj", proj, "--json", str(out)])
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    n = image_tokens("mlp", SIDE, PATCH)
    assert r["image_tokens"] == r["image_pruned_tokens"] == n and r["pruned_tokens"] == r["prompt_tokens"] - 1
    assert r["full_ms"]["n"] == r["pop_ms"]["n"] == 1 and r["speedup"] > 0 and 1 < r["ideal_speedup"] < 2
    assert r["commit"] and r["machine"] and r["command"]  # provenance (under CliRunner the command is pytest's argv)
    assert "| 64x48 | 144 (144 pruned) |" in result.output
    result = CliRunner().invoke(cli, args)  # no projector: a usage error before anything loads
    assert result.exit_code == 2 and "--mmproj" in result.output


def test_a_chat_handler_passed_in_is_observed_too(smollm2):
    """PopLlama(chat_handler=one of upstream's multimodal handlers): used as it is, image tokens pruned."""
    from llama_cpp.llama_chat_format import Llava15ChatHandler

    from pop_local import PopLlama

    handler = Llava15ChatHandler(clip_model_path=mmproj("mlp", 576, image_size=SIDE, patch_size=PATCH), verbose=False)
    llm = PopLlama(smollm2, skip_layers="20-29", min_tokens=0, n_ctx=1024, chat_handler=handler, verbose=False)
    try:
        assert llm.multimodal and llm.chat_handler is handler
        delta, _ = ask(llm, png_bytes())
        n = image_tokens("mlp", SIDE, PATCH)
        assert delta["image_tokens"] == delta["image_pruned_tokens"] == n and delta["full_tokens"] == 1
    finally:
        llm.close()
