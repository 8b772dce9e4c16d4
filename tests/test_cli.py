"""The front door: chat, bench, eval and serve on the real SmolLM2 model, driven like a user would."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from helpers.serve_process import serving
from pop_local.apps.cli import cli

pytestmark = pytest.mark.slow

STATS = re.compile(r"prompt (\d+) tokens \((\d+) cached, (\d+) evaluated, (\d+) pruned\)")


@pytest.fixture(scope="module")
def pop_model(smollm2, tmp_path_factory):
    from pop_local.converter.writer import write_pop_gguf

    path = tmp_path_factory.mktemp("cli") / "smollm2.pop.gguf"
    write_pop_gguf(smollm2, path, "20-29", min_tokens=0)  # short test prompts are pruned too
    return str(path)


def pop_local(*args, stdin=None, env=None, timeout=600):
    """Run the installed command line in a fresh process (its own signals, stdin and exit code)."""
    return subprocess.run([sys.executable, "-m", "pop_local.apps.cli", *args], input=stdin, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout)


# --- help and usage ---------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["chat", "bench", "eval", "serve", "convert", "inspect", "devices", "rpc-server"])
def test_every_command_has_help_with_examples(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output


@pytest.mark.parametrize("args", [["chat", "x.gguf", "--max-tokens", "many"], ["bench", "x.gguf", "--ctx", "a,b"],
                                  ["eval", "x.gguf", "--ctx", "1"], ["serve", "x.gguf", "--port", "http"]])
def test_usage_errors_exit_2(args):
    assert CliRunner().invoke(cli, args).exit_code == 2


def test_devices_lists_what_the_loaded_build_sees():
    """A fresh process: the loaded libraries decide (LLAMA_CPP_LIB_PATH picks a GPU build)."""
    from pop_local.runtime.devices import devices

    result = pop_local("devices")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("backends in this build: ") and "CPU" in lines[0]
    found = devices()
    assert any(d.kind == "cpu" for d in found)
    for d in found:
        assert any(line.split()[:2] == [d.name, d.kind] for line in lines[1:]), d
    assert ("no GPU" in result.stdout) == (not any(d.offloads for d in found))


# --- bad model files, every command -------------------------------------------------------------------

@pytest.mark.parametrize("command", ["chat", "bench", "eval", "serve"])
def test_missing_and_non_gguf_files_are_one_line_errors(command, tmp_path):
    missing = CliRunner().invoke(cli, [command, str(tmp_path / "nope.gguf")])
    assert missing.exit_code == 1
    assert missing.output.strip().count("\n") == 0 and "no such file" in missing.output
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n")
    before = text.read_bytes()
    bad = CliRunner().invoke(cli, [command, str(text)])
    assert bad.exit_code == 1
    assert bad.output.strip().count("\n") == 0 and "not a readable GGUF file" in bad.output
    assert text.read_bytes() == before


# --- chat ----------------------------------------------------------------------------------------

def test_chat_reuse_cache_keeps_the_cache_across_pop_switches(pop_model):
    script = "What is the capital of France?\n/pop off\nAnd the capital of Italy?\n"
    r = pop_local("chat", pop_model, "--max-tokens", "16", "--temperature", "0", "--reuse-cache", stdin=script)
    assert r.returncode == 0, r.stderr
    (p1, c1, e1, n1), (p2, c2, e2, n2) = [tuple(int(x) for x in m) for m in STATS.findall(r.stderr)]
    assert c2 > p1 and n2 == 0 and e2 == p2 - c2  # second turn reuses the first turn's cache; POP off


def test_chat_piped_conversation_with_commands(pop_model):
    script = "\n".join([
        "What is the capital of France?",
        "/stats",
        "/pop off",
        "And the capital of Italy?",
        "/pop on",
        "/system You answer in one short sentence.",
        "/reset",
        "Hello!",
        "/exit",
        "this line is never read",
    ]) + "\n"
    r = pop_local("chat", pop_model, "--max-tokens", "24", "--temperature", "0", "--seed", "1", stdin=script)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    turns = [tuple(int(x) for x in m) for m in STATS.findall(r.stderr)]
    assert len(turns) == 3  # /exit stopped before the last line
    (p1, c1, e1, n1), (p2, c2, e2, n2), (p3, c3, e3, n3) = turns
    assert c1 == 0 and e1 == p1 and n1 == e1 - 1           # whole prompt pruned but its last token
    # POP off: the conversation computed with POP is not reused, the second turn equals a fresh full run
    assert c2 == 0 and n2 == 0 and e2 == p2 and "re-evaluated" in r.stderr
    assert n3 == e3 - 1                                      # POP back on after /pop on
    assert "1 replies" in r.stderr and "POP off" in r.stderr and "conversation cleared" in r.stderr
    assert "system prompt set" in r.stderr
    assert "\x1b[" not in r.stdout + r.stderr  # no colour codes when not on a terminal
    assert "llama_model_loader" not in r.stderr  # quiet without --verbose


def test_chat_verbose_shows_the_llama_cpp_log(pop_model):
    r = pop_local("chat", pop_model, "--verbose", stdin="/exit\n")
    assert r.returncode == 0 and "llama_model_loader" in r.stderr


def test_chat_ctrl_c_stops_the_reply_not_the_program(pop_model):
    proc = subprocess.Popen([sys.executable, "-m", "pop_local.apps.cli", "chat", pop_model, "--max-tokens", "400",
                             "--temperature", "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdin.write("Write a long story about a dragon who learns to bake bread.\n")
    proc.stdin.flush()
    first = proc.stdout.read(1)  # the reply has started streaming
    assert first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate("/stats\n", timeout=300)
    assert proc.returncode == 0, err
    assert "[stopped]" in err
    assert "1 replies" in err  # still running after the interrupt: /stats answered
    (_, _, _, pruned), = [tuple(int(x) for x in m) for m in STATS.findall(err)]
    assert pruned > 0


def test_chat_with_a_gguf_without_pop_keys_runs_the_full_model_and_says_so(smollm2):
    r = pop_local("chat", smollm2, "--max-tokens", "8", "--temperature", "0", stdin="Hi\n")
    assert r.returncode == 0, r.stderr
    assert "has no pop.* keys: the full model runs" in r.stderr
    (_, _, _, pruned), = [tuple(int(x) for x in m) for m in STATS.findall(r.stderr)]
    assert pruned == 0


def test_chat_default_model_is_converted_once_and_cached(default_model_start):
    first, folder = default_model_start  # the session's first start (conftest.py), the real command
    env = {"POP_LOCAL_CACHE": str(folder)}
    assert "first start: making the default model POP-ready" in first.stderr
    cached = os.listdir(folder / "models")
    assert len(cached) == 1 and cached[0].endswith(".pop.gguf")
    from pop_local import read_pop_metadata

    meta = read_pop_metadata(folder / "models" / cached[0])
    # converted with the default quality budget and its answer check: the fastest set at least as faithful
    # as the paper's that keeps the full model's answers, or, when none does, the shallowest (retention first)
    f = meta.frontier
    assert f.budget == "max_kl=paper" and meta.skip_layers == f.choice.skip and f.check is not None
    # documents were added until the full model had 40 right, or the most there are (24 of up to 4 questions)
    assert f.check[1] == 1024 and (f.check[2] >= 40 or f.check[0] > 80), f.check
    assert f.choice.kl(meta.extra["pop.prefill.kv_method"]) <= f.paper_kl
    checked = [r for r in f.rows if r.check("own") is not None]
    passing = [r for r in checked if f.passed(r.check("own"))]
    assert len(passing) <= 1 and len(checked) > 1  # fastest first, stopped at the first that keeps them
    expected = passing[0] if passing else min(f.rows, key=lambda r: len(r.skip))
    assert f.choice == expected and all(r.speedup_2048 > expected.speedup_2048 for r in checked if r is not expected)
    assert len(meta.extra["pop.importance.prefill"]) == 30  # really calibrated
    # re-quantized from the package's Q4_1 to the type that prefills fastest at its answers (Q8_0,
    # weight-types-smollm2.json and suite-smollm2-q8_0.json); the temporary copy is gone
    from gguf import GGMLQuantizationType, GGUFReader

    assert {t.tensor_type for t in GGUFReader(folder / "models" / cached[0]).tensors
            if t.name == "blk.0.attn_q.weight"} == {GGMLQuantizationType.Q8_0}
    second = pop_local("chat", "--max-tokens", "8", "--temperature", "0", stdin="Hi\n", env=env)
    assert second.returncode == 0 and "first start" not in second.stderr
    # "Hi" is a short prompt: under the default minimum it runs the full model, and the line says so
    assert re.search(r"prompt \d+ tokens \(0 cached, \d+ evaluated, 0 pruned: under the 128-token minimum",
                     second.stderr), second.stderr[-500:]
    assert os.listdir(folder / "models") == cached


_NO_TORCH = """import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Blocked())
"""


def test_without_torch_chat_uses_the_papers_set_and_convert_says_what_to_install(tmp_path, smollm2):
    """A plain `pip install pop-local` has no torch: chat still starts with the default model (the
    paper's tail set, uncalibrated, with a note) and convert names the missing package in one line.
    torch and transformers are hidden from the child processes by an import hook (sitecustomize)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_NO_TORCH)
    env = {"POP_LOCAL_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(hook)}
    out = pop_local("chat", "--max-tokens", "8", "--temperature", "0", "--pop-min-tokens", "0", stdin="Hi\n", env=env)
    assert out.returncode == 0, out.stderr
    assert "torch is not installed: the default model skips the paper's last third (layers 20-29)" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout.strip()
    (_, _, evaluated, pruned), = [tuple(int(x) for x in m) for m in STATS.findall(out.stderr)]
    assert pruned == evaluated - 1
    (cached,) = os.listdir(tmp_path / "cache" / "models")
    assert "paper-uncalibrated" in cached
    converted = pop_local("convert", smollm2, "-o", str(tmp_path / "x.gguf"), env=env)
    assert converted.returncode == 1 and "Traceback" not in converted.stderr
    assert converted.stderr.strip() == ("Error: calibration needs torch: pip install 'pop-local[convert]' (or write "
                                        "a skip set without calibrating: --layers A-B --no-calibrate)")
    assert not os.path.exists(tmp_path / "x.gguf")


@pytest.mark.parametrize("args, message", [
    (["--seed", "4294967296"], "Invalid value for '--seed': Input should be less than or equal to 4294967294"),
    (["--seed", "-2"], "Invalid value for '--seed'"),
    (["--n-ctx", "8"], "Invalid value for '--n-ctx'"),
    (["--threads", "0"], "Invalid value for '--threads'"),
    (["--skip-layers", "9-3"], "Invalid value for '--skip-layers': range 9-3 is descending"),
    (["--override-kv", "pop.prefill.enabled"], "Invalid value for '--override-kv': expected KEY=TYPE:VALUE"),
    (["--override-kv", "pop.prefill.enabled=bool:perhaps"], "'perhaps' is not a bool"),
    (["--kv-mode", "mine"], "Invalid value for '--kv-mode'"),
])
def test_bad_settings_are_usage_errors_before_anything_loads(args, message, tmp_path):
    """The settings are checked as the options are read (pop_local.runtime.settings): exit 2, one Error line."""
    for command in ("chat", "serve"):
        r = CliRunner().invoke(cli, [command, str(tmp_path / "never-read.gguf"), *args])
        assert r.exit_code == 2, r.output
        errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and message in errors[0], r.output


def test_settings_checked_against_the_model_name_the_option(pop_model):
    r = CliRunner().invoke(cli, ["chat", pop_model, "--skip-layers", "28-31"])
    assert r.exit_code == 1 and r.output.strip() == ("Error: --skip-layers: layer 31 is out of range "
                                                     "(the model has 30 layers, 0-29)")
    r = CliRunner().invoke(cli, ["chat", pop_model, "--override-kv", "pop.prefill.skip_layers=str:40"])
    assert r.exit_code == 1 and "pop.prefill.skip_layers: layer 40 is out of range" in r.output
    r = CliRunner().invoke(cli, ["serve", pop_model, "--n-ctx", "100000"])
    assert r.exit_code == 1 and r.output.strip() == ("Error: --n-ctx: 100000 is more than smollm2.pop.gguf's context "
                                                     "(8192 tokens)")


# --- bench ----------------------------------------------------------------------------------------

def test_bench_json_and_plot(pop_model, tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "speedup.png"
    r = CliRunner().invoke(cli, ["bench", pop_model, "--ctx", "64,160", "--repeats", "2", "--decode-tokens", "8",
                                 "--json", str(out), "--plot", str(png)])
    assert r.exit_code == 0, r.output
    assert "| 160 |" in r.output and "FLOP ideal" in r.output
    res = json.loads(out.read_text())
    assert [row["n_tokens"] for row in res["prefill"]] == [64, 160]
    for row in res["prefill"]:
        assert row["pruned_tokens"] == row["n_tokens"] - 1
        assert row["full_ms"]["n"] == row["pop_ms"]["n"] == 2
        assert row["speedup"] == pytest.approx(row["full_ms"]["median"] / row["pop_ms"]["median"])
        assert 1.3 < row["ideal_speedup"] < 1.5  # 10 of 30 layers reduced to their K/V projections
    assert res["decode"]["full_tps"]["median"] > 0 and res["decode"]["pop_tps"]["median"] > 0
    assert res["skip_layers"] == "20-29"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_contexts_beyond_the_model(pop_model):
    r = CliRunner().invoke(cli, ["bench", pop_model, "--ctx", "512,100000"])
    assert r.exit_code == 1
    assert "--ctx: 100000 is more than" in r.output and "8192 tokens" in r.output


def test_bench_without_a_skip_set_says_there_is_nothing_to_compare(smollm2):
    r = CliRunner().invoke(cli, ["bench", smollm2, "--ctx", "32", "--repeats", "1"])
    assert r.exit_code == 1 and "nothing to compare" in r.output


# --- eval -----------------------------------------------------------------------------------------

def test_eval_orders_the_baselines_as_the_paper_does(pop_model, tmp_path):
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(cli, ["eval", pop_model, "--ctx", "256", "--continuation", "32", "--windows", "2",
                                 "--passkey", "256", "--trials", "2", "--json", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())["modes"]
    assert set(m) == {"full", "pop", "pop_no_boundary", "static_removal"}
    assert m["full"]["top1_agreement"] == 1.0 and m["full"]["kl_to_full"] == pytest.approx(0, abs=1e-9)
    # POP stays close to the full model; removing the same layers in both stages collapses
    assert m["pop"]["kl_to_full"] < 0.5 < m["static_removal"]["kl_to_full"]
    assert m["pop"]["top1_agreement"] > m["static_removal"]["top1_agreement"]
    assert m["pop"]["perplexity"] < m["static_removal"]["perplexity"]
    # the exact boundary token matters
    assert m["pop"]["kl_to_full"] < m["pop_no_boundary"]["kl_to_full"]
    assert m["full"]["passkey_accuracy"]["256"] == 1.0
    assert m["static_removal"]["passkey_accuracy"]["256"] < 1.0


def test_eval_refuses_contexts_beyond_the_model(pop_model):
    r = CliRunner().invoke(cli, ["eval", pop_model, "--ctx", "8190", "--passkey", ""])
    assert r.exit_code == 1 and "more than" in r.output and "8192 tokens" in r.output


def test_eval_data_file_too_short(pop_model, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    r = CliRunner().invoke(cli, ["eval", pop_model, "--ctx", "128", "--passkey", "", "--data", str(short)])
    assert r.exit_code == 1 and "needs" in r.output and "--data" in r.output


# --- serve ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(pop_model):
    with serving(pop_model, "--n-ctx", "2048", "--api-key", "test-key", "--alias", "smollm2-pop") as running:
        yield running


def test_serve_with_the_openai_client(server):
    import openai

    port, _ = server
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="test-key")
    assert [m.id for m in client.models.list()] == ["smollm2-pop"]

    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model="smollm2-pop", messages=msgs, max_tokens=16, temperature=0)
    assert "Paris" in reply.choices[0].message.content and reply.usage.prompt_tokens > 20
    pieces = [c.choices[0].delta.content or "" for c in
              client.chat.completions.create(model="smollm2-pop", messages=msgs, max_tokens=16, temperature=0,
                                             stream=True)]
    assert len(pieces) > 2 and "".join(pieces) == reply.choices[0].message.content

    text = client.completions.create(model="smollm2-pop", prompt="The three primary colours are", max_tokens=12,
                                     temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="smollm2-pop", prompt="The three primary colours are", max_tokens=12, temperature=0, stream=True))
    assert text.choices[0].text and streamed == text.choices[0].text

    stats = client.get("/../pop/stats", cast_to=object)  # the extra route, through the same auth
    assert stats["active"] and stats["skip_layers"] == list(range(20, 30)) and stats["pruned_tokens"] > 20
    assert stats["min_tokens"] == 0 and stats["short_prompts"] == 0  # the file's minimum (written as 0 above)


def test_serve_requires_the_api_key_and_binds_localhost(server):
    import urllib.error
    import urllib.request

    port, proc = server
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30)
    assert e.value.code == 401
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("listening addresses are read from /proc/net/tcp (Linux)")
    with open("/proc/net/tcp") as f:  # local_address is hex ip:port; state 0A is LISTEN
        listening = [line.split()[1] for line in f.readlines()[1:]
                     if line.split()[3] == "0A" and line.split()[1].endswith(f":{port:04X}")]
    assert listening == ["0100007F:%04X" % port]  # 127.0.0.1 only


def test_serve_port_in_use_is_a_one_line_error(pop_model, server):
    port, _ = server
    r = CliRunner().invoke(cli, ["serve", pop_model, "--port", str(port)])
    assert r.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in r.output


# --- interruption ---------------------------------------------------------------------------------

def _default_sigint():
    # a shell starting a job in the background (CI runners, `cmd &`) makes it ignore SIGINT, and Python
    # keeps an ignored SIGINT ignored: give the command the SIGINT a terminal would
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "pop_local.apps.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint,
                            env={**os.environ, **(env or {})})


def _wait_for(predicate, seconds=300, step=0.01):
    import time

    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


@pytest.mark.parametrize("sig, code, how", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_convert_interrupted_while_calibrating_leaves_nothing(smollm2, tmp_path, sig, code, how):
    import threading
    import time

    out = tmp_path / "out.pop.gguf"
    proc = _start("convert", smollm2, "-o", str(out), "--samples", "8", "--seq-len", "64")
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    assert _wait_for(lambda: "calibrating llama" in "".join(seen), step=0.1)
    time.sleep(5)  # loading the model, sampling responses: inside the calibration
    assert proc.poll() is None
    proc.send_signal(sig)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    err = "".join(seen)
    assert proc.returncode == code, err[-2000:]
    assert err.strip().splitlines()[-1] == (f"Error: interrupted ({how}); nothing was written (the output and "
                                            "temporary files are removed)")
    assert os.listdir(tmp_path) == []


# sitecustomize for the child: the GGUF writer stops before its first tensor until a signal arrives (the
# handlers pop-local installs raise, which ends the sleep), so the signal always lands mid-write
_PAUSE_WRITE = """import os, time
import gguf
_write = gguf.GGUFWriter.write_tensor_data
def _paused(self, *args, **kwargs):
    if not getattr(self, "_pop_test_paused", False):
        self._pop_test_paused = True
        open(os.environ["POP_TEST_WRITING"], "w").close()
        time.sleep(600)
    return _write(self, *args, **kwargs)
gguf.GGUFWriter.write_tensor_data = _paused
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_convert_interrupted_while_writing_leaves_no_partial_file(smollm2, tmp_path, sig, code):
    """Signalled while the temporary file is being written (header and metadata out, tensors not)."""
    hook, work = tmp_path / "hook", tmp_path / "out"
    hook.mkdir()
    work.mkdir()
    (hook / "sitecustomize.py").write_text(_PAUSE_WRITE)
    writing = tmp_path / "writing"
    out = work / "out.pop.gguf"
    proc = _start("convert", smollm2, "-o", str(out), "--layers", "20-29", "--no-calibrate",
                  env={"PYTHONPATH": str(hook), "POP_TEST_WRITING": str(writing)})
    assert _wait_for(lambda: writing.exists() or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    assert [n for n in os.listdir(work) if n.startswith(".pop-")], os.listdir(work)  # the temporary file
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "nothing was written" in err.strip().splitlines()[-1]
    assert os.listdir(work) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_cleanly_on_a_signal(pop_model, tmp_path, sig):
    """uvicorn shuts down gracefully on either signal; the command says so and exits 0."""
    with serving(pop_model, "--n-ctx", "512") as (port, proc):
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert err.strip().splitlines()[-1] == "server stopped" and "Traceback" not in err


def test_a_hub_reference_that_fails_is_one_line(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    for command in ("chat", "convert"):
        args = ([command, "someone/missing/model.gguf"]
                + (["-o", str(tmp_path / "o.gguf")] if command == "convert" else []))
        r = pop_local(*args, env=env, timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: someone/missing/model.gguf: no such file")
        assert "HF_HUB_OFFLINE is set" in lines[0]
