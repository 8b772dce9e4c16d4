"""POP across llama.cpp's RPC backend, on loopback only: `pop-local rpc-server` processes on 127.0.0.1
(each serving its CPU as a device), the model split over the local CPU and two remote devices.

The remote devices run the same ggml CPU kernels on the same inputs as a local run, so the split
model is compared exactly (bytes of the KV cache, logits): any difference would be a transport or
placement error, not arithmetic.
"""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from helpers.llama_contexts import (
    cache_layers,
    contexts,
    decode,
    default_skip,
    logged_context,
    prompt_entries,
    set_skip,
    stats,
    tokens,
)
from helpers.serve_process import free_port, wait_until_listening
from pop_local import PopLlama

pytestmark = pytest.mark.slow

N_LOCAL_LAYERS = 10  # SmolLM2's 30 layers: 0-9 here, 10-20 and 21-29 on the two servers


@contextlib.contextmanager
def rpc_server(*args, start_timeout=60):
    """`pop-local rpc-server` on a free loopback port: yields ("127.0.0.1:PORT", process)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pop_local.apps.cli", "rpc-server", "--port", str(port),
                             "--threads", "1", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a background job (CI) inherits an ignored SIGINT; Ctrl-C is tested here
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until_listening(proc, port, start_timeout, "rpc-server")
        yield f"127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def servers():
    with rpc_server() as (a, _), rpc_server() as (b, _):
        yield [a, b]


@pytest.fixture(scope="module")
def models(smollm2, servers):
    """(local, split): the same POP model on the CPU alone and over CPU + two remote devices."""
    common = dict(skip_layers="20-29", n_ctx=1024, n_batch=512, n_ubatch=512, verbose=False, seed=1, min_tokens=0)
    local = PopLlama(smollm2, n_gpu_layers=0, **common)
    # llama.cpp counts the output layer in n_gpu_layers: 21 puts layers 10-29 on the devices
    split = PopLlama(smollm2, rpc_servers=",".join(servers), n_gpu_layers=30 - N_LOCAL_LAYERS + 1,
                     tensor_split=[1.0, 1.0], **common)
    yield local, split
    split.close()
    local.close()


def test_split_model_stores_the_same_cache_and_boundary_logits(models, long_text):
    local, split = models
    n_layer = local.pop_metadata.n_layer
    entries = prompt_entries(tokens(local, long_text, 200))
    with contexts(local, 1) as (here,), logged_context(split) as (there, log):
        for ctx in (here, there):
            set_skip(ctx, default_skip(n_layer))
        want, got = decode(here, entries)[199], decode(there, entries)[199]
        assert stats(there).pruned_tokens == 199 and stats(there).full_tokens == 1
        assert cache_layers(there) == cache_layers(here)
        assert np.array_equal(got, want)
        # where the nodes ran: K/V of layers 0-9 here, then one server, then the other (skipped layers)
        ran = log.take()
        places = [ran[f"Kcur-{il}"] for il in range(n_layer)]
        assert not any(p.startswith("RPC") for p in places[:N_LOCAL_LAYERS]), places
        first, second = places[N_LOCAL_LAYERS], places[-1]
        assert first.startswith("RPC") and second.startswith("RPC") and first != second, places
        cut = places.index(second)  # tensor_split 1:1 over layers 10-29 and the output layer's slot
        assert places[N_LOCAL_LAYERS:cut] == [first] * (cut - N_LOCAL_LAYERS) and cut in (20, 21), places
        assert set(places[cut:]) == {second}, places


def test_split_model_chats_like_the_local_one_over_two_turns(models):
    local, split = models
    answers = {}
    for name, llm in (("local", local), ("split", split)):
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        first = llm.create_chat_completion(messages, max_tokens=12, temperature=0)["choices"][0]["message"]["content"]
        before = llm.pop_stats()["pruned_tokens"]
        messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And of Italy?"}]
        second = llm.create_chat_completion(messages, max_tokens=12, temperature=0)["choices"][0]["message"]["content"]
        assert llm.pop_stats()["pruned_tokens"] > before  # the second turn's prompt was pruned too
        answers[name] = (first, second)
    assert answers["split"] == answers["local"] and all(answers["split"])


CLIENT = textwrap.dedent("""
    import sys
    from pop_local import PopLlama
    from pop_local.measure.texts import passage
    llm = PopLlama(sys.argv[1], rpc_servers=sys.argv[2], rpc_timeout=int(sys.argv[3]), n_gpu_layers=21,
                   skip_layers="20-29", n_ctx=4096, n_batch=4096, n_ubatch=512, verbose=False)
    toks = llm.tokenize(passage().encode())[:3000]
    print("loaded", flush=True)
    for _ in range(100):
        llm.reset()
        llm.eval(toks)
    print("finished", flush=True)
""")


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_server_that_goes_away_mid_prefill_is_a_clear_error(smollm2, how):
    """Killed: the connection breaks at once. Stopped (SIGSTOP, a hung machine): the connection stays
    open and only the request timeout (--rpc-timeout, 3 s here) ends the wait. Either way one line, exit 1."""
    with rpc_server() as (endpoint, server):
        client = subprocess.Popen([sys.executable, "-c", CLIENT, smollm2, endpoint, "3"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert client.stdout.readline().strip() == "loaded", client.stderr.read()
            time.sleep(1.0)  # inside the prefills
            server.send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
            start = time.time()
            _, err = client.communicate(timeout=60)
            took = time.time() - start
        finally:
            if client.poll() is None:
                client.kill()
            server.send_signal(signal.SIGCONT)
        assert client.returncode == 1
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines[-1].startswith(f"Error: the RPC server at {endpoint} stopped answering"), err
        assert took < (5 if how == "killed" else 20), took


def test_an_unreachable_server_is_a_one_line_error_before_loading(smollm2):
    closed = f"127.0.0.1:{free_port()}"
    result = subprocess.run([sys.executable, "-m", "pop_local.apps.cli", "bench", smollm2, "--skip-layers", "20-29",
                             "--rpc", closed], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: cannot reach the RPC server at {closed}: Connection refused"


def test_rpc_server_binds_loopback_warns_elsewhere_and_stops_on_ctrl_c():
    with rpc_server() as (endpoint, proc):
        assert endpoint.startswith("127.0.0.1:")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "rpc-server stopped (Ctrl-C)" in err
        assert "WARNING" not in err
    with rpc_server("--host", "0.0.0.0") as (_, proc):
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "rpc-server stopped (SIGTERM)" in err
        assert "WARNING: listening on 0.0.0.0" in err and "no authentication" in err


def test_a_model_loaded_without_rpc_servers_stays_off_the_registered_ones(models, smollm2, long_text):
    """Registered servers stay in ggml's registry for the whole process; a later model without
    rpc_servers, every layer "offloaded", must not land on them."""
    _, split = models  # the servers are registered by now
    later = PopLlama(smollm2, n_gpu_layers=-1, n_ctx=256, verbose=False)
    try:
        with logged_context(later) as (ctx, log):
            decode(ctx, prompt_entries(tokens(later, long_text, 16)))
            assert set(log.take().values()) == {"CPU"}
    finally:
        later.close()


def test_plain_models_of_the_converter_stay_off_a_registered_server_that_has_gone(smollm2):
    """The converter loads plain llama_cpp models (sampling, its speed probe). After an RPC server was
    registered and has stopped, such a model must still run here: on the server it would end the
    process (the test suite once died this way in the calibration tests after this module)."""
    code = f"""
import subprocess, sys, time
from pop_local import PopLlama
from pop_local.runtime.models import plain_llama
sys.path.insert(0, {os.path.join(os.path.dirname(os.path.abspath(__file__)))!r})
from helpers.serve_process import free_port, wait_until_listening
port = free_port()
server = subprocess.Popen([sys.executable, "-m", "pop_local", "rpc-server", "--port", str(port), "--threads", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
wait_until_listening(server, port, 60, "rpc-server")
split = PopLlama({smollm2!r}, rpc_servers=f"127.0.0.1:{{port}}", n_gpu_layers=8, n_ctx=128, verbose=False)
split.close()
server.kill(); server.wait()
llm = plain_llama({smollm2!r}, n_ctx=128, n_gpu_layers=-1, verbose=False)
llm.eval(llm.tokenize(b"The keeper wound the clock at eight."))
print("OK")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr[-2000:]


def test_a_server_that_cannot_be_reached_is_bounded_by_the_connect_timeout():
    from pop_local.errors import PopError
    from pop_local.runtime.rpc import check_reachable

    start = time.time()
    with pytest.raises(PopError, match="cannot reach the RPC server at 10.255.255.1:50052"):
        check_reachable("10.255.255.1:50052", timeout=1.0)  # unroutable: no answer, or no route at once
    assert time.time() - start < 5


def test_the_server_app_splits_its_model_too(smollm2):
    """`pop-local serve --rpc`: the settings reach upstream's ModelSettings (rpc_servers, tensor_split),
    its loader hands them to PopLlama, which registers the server before the load."""
    from pop_local.apps.server import create_pop_app
    from pop_local.runtime.settings import LoadSettings

    with rpc_server() as (endpoint, _):
        load = LoadSettings(n_ctx=256, rpc_servers=endpoint, n_gpu_layers=21, tensor_split="1", rpc_timeout=30)
        llm = create_pop_app(smollm2, load).state.pop_llm
        try:
            with logged_context(llm) as (ctx, log):
                decode(ctx, prompt_entries(tokens(llm, "The lighthouse keeper kept two logbooks.", 12)))
                assert f"RPC0[{endpoint}]" in set(log.take().values())
        finally:
            llm.close()
