"""One settings model (pop_local.runtime.settings) behind the CLI, the server and both integrations: values
checked once where they enter, then passed on typed."""

import pytest
from click.testing import CliRunner

from pop_local.apps.cli import _flag, cli
from pop_local.errors import PopError
from pop_local.runtime.settings import LoadFields, LoadSettings, PopFields, PopSettings, build


def _options(command):
    ctx = cli.make_context("pop-local", [command, "--help"], resilient_parsing=True)
    cmd = cli.get_command(ctx, command)
    return {name for p in cmd.params for name in p.opts + p.secondary_opts}


@pytest.mark.parametrize("command", ["chat", "serve"])
def test_every_setting_is_an_option_of_chat_and_serve(command):
    options = _options(command)
    for name in list(LoadFields.model_fields) + list(PopFields.model_fields):
        assert _flag(name) in options, name


def test_bench_and_eval_take_the_load_settings_they_do_not_set_themselves():
    for command in ("bench", "eval"):
        options = _options(command)
        assert {"--threads", "--n-gpu-layers", "--flash-attn", "--override-kv", "--skip-layers"} <= options
        assert "--pop" not in options and "--kv-mode" not in options  # they run every mode themselves


def test_the_integrations_inherit_the_same_fields():
    from pop_local.integrations.langchain import ChatPopLocal
    from pop_local.integrations.llama_index import PopLocalLLM

    for cls in (ChatPopLocal, PopLocalLLM):
        for name, field in {**LoadFields.model_fields, **PopFields.model_fields}.items():
            assert cls.model_fields[name].default == field.default, (cls, name)
        with pytest.raises(ValueError, match="less than or equal to 4294967294"):
            cls(seed=2**32)
        with pytest.raises(ValueError, match="fitted"):
            cls(kv_mode="mine")
    a = ChatPopLocal(n_ctx=2048, kv_overrides={"pop.prefill.enabled": False}, seed=1)
    b = PopLocalLLM(n_ctx=2048, kv_overrides={"pop.prefill.enabled": False}, seed=2)
    assert a.load_settings().key() == b.load_settings().key()  # one shared model (the seed is per request)
    assert a.load_settings().key() != ChatPopLocal(n_ctx=2048).load_settings().key()


def test_llama_params_are_llama_cpps_own_arguments_only():
    """PopLlama reads rpc_servers, rpc_timeout and reuse_cache_across_settings from the settings; what
    goes to llama_cpp.Llama is llama.cpp's own, kv_overrides typed (no KEY=TYPE:VALUE strings)."""
    import inspect

    import llama_cpp

    load = LoadSettings(kv_overrides={"pop.prefill.skip_layers": "20-29", "pop.prefill.enabled": False,
                                      "x.int": 7, "x.float": 0.25}, n_threads=3, seed=5, tensor_split="1,2")
    params = load.llama_params()
    assert params["kv_overrides"] == {"pop.prefill.skip_layers": "20-29", "pop.prefill.enabled": False,
                                      "x.int": 7, "x.float": 0.25}
    assert params["n_threads"] == params["n_threads_batch"] == 3 and params["seed"] == 5
    assert params["tensor_split"] == [1.0, 2.0]
    accepted = set(inspect.signature(llama_cpp.Llama.__init__).parameters)
    assert set(params) <= accepted, set(params) - accepted
    assert not {"rpc_servers", "rpc_timeout", "reuse_cache_across_settings"} & set(params)


@pytest.mark.parametrize("values, message", [
    ({"kv_overrides": {"a=b": 1}}, "is not a GGUF key name"),
    ({"kv_overrides": {"pop.prefill.skip_layers": "1:2"}}, "cannot contain"),
    ({"n_batch": 0}, "greater than or equal to 1"),
    ({"seed": -7}, "greater than or equal to -1"),
    ({"cache": True}, "Extra inputs are not permitted"),
    ({"rpc_servers": "10.0.0.2"}, "is not HOST:PORT"),
    ({"rpc_servers": "10.0.0.2:70000"}, "is not HOST:PORT"),
    ({"tensor_split": "1,x"}, "comma-separated numbers"),
    ({"tensor_split": "0,0"}, "not all zero"),
    ({"rpc_timeout": 0}, "greater than or equal to 1"),
])
def test_bad_load_settings_are_one_line_errors(values, message):
    with pytest.raises(PopError, match=message) as e:
        build(LoadSettings, values)
    assert "\n" not in str(e.value)


def test_rpc_and_split_settings_are_parsed_once_into_their_types():
    load = LoadSettings(rpc_servers=" 10.0.0.2:50052,10.0.0.3:50052,10.0.0.2:50052", tensor_split="1, 1,2",
                        rpc_timeout=30)
    assert load.rpc_servers == ("10.0.0.2:50052", "10.0.0.3:50052")  # checked, duplicates dropped
    assert load.tensor_split == (1.0, 1.0, 2.0)
    # a list, as the library takes it
    assert LoadSettings(rpc_servers=["10.0.0.2:50052"]).rpc_servers == ("10.0.0.2:50052",)
    assert load.llama_params()["tensor_split"] == [1.0, 1.0, 2.0] and "rpc_servers" not in load.llama_params()


def test_pop_settings():
    from pop_local.errors import PopMetadataError, PopSettingError

    assert PopSettings().pop is None and PopSettings(skip_layers="20-29").skip_layers == tuple(range(20, 30))
    assert PopSettings(skip_layers=[3, 4]).skip_layers == (3, 4) and PopSettings(skip_layers="").skip_layers == ()
    with pytest.raises(PopMetadataError, match='skip_layers: cannot read "x"') as e:  # the one skip-set parser
        build(PopSettings, {"skip_layers": "x"})
    assert e.value.field == "skip_layers" and e.value.reason.startswith('cannot read "x"')
    with pytest.raises(PopMetadataError, match="ascending"):
        build(PopSettings, {"skip_layers": [5, 3]})
    with pytest.raises(PopSettingError, match="--kv-mode") as e:
        build(PopSettings, {"kv_mode": "mine"}, {"kv_mode": "--kv-mode"})
    assert e.value.field == "--kv-mode"


def test_the_cli_words_library_messages_in_its_options():
    from pop_local.apps.cli import _render

    assert _flag("rpc_servers") == "--rpc" and _flag("n_ctx") == "--n-ctx" and _flag("llama_log") == "--verbose"
    assert _flag("pop.prefill.skip_layers") == "pop.prefill.skip_layers"  # a GGUF key stays as it is
    assert _render("drop `layers` / `ratio`") == "drop --layers / --ratio"
    assert _render("use `kv=own`, `calibrate=False` or `force=True`") == "use --kv own, --no-calibrate or --force"
    assert _render("run `pop-local convert` first") == "run `pop-local convert` first"  # a command, not a field


def test_seed_minus_one_means_random():
    from pop_local.runtime.settings import RANDOM_SEED

    assert LoadSettings().llama_params()["seed"] == RANDOM_SEED
    assert LoadSettings(seed=0).llama_params()["seed"] == 0


def test_cli_usage_error_for_a_seed_out_of_range_never_loads(tmp_path):
    r = CliRunner().invoke(cli, ["chat", str(tmp_path / "x.gguf"), "--seed", "99999999999"])
    assert r.exit_code == 2 and "Traceback" not in r.output


@pytest.mark.slow
def test_a_command_reads_the_model_header_once(monkeypatch, smollm2, tmp_path):
    """chat with a file, and the server's app: one header read each (it was two or three)."""
    from pop_local.converter.writer import write_pop_gguf
    from pop_local.format import gguf_kv

    model = str(tmp_path / "m.pop.gguf")
    write_pop_gguf(smollm2, model, "20-29")
    reads = []
    real = gguf_kv.read_gguf_kv
    monkeypatch.setattr(gguf_kv, "read_gguf_kv", lambda path, *a, **k: reads.append(path) or real(path, *a, **k))
    r = CliRunner().invoke(cli, ["chat", model, "--n-ctx", "256"], input="")
    assert r.exit_code == 0, r.output
    assert reads == [model]

    from pop_local.apps.server import create_pop_app

    reads.clear()
    app = create_pop_app(model, LoadSettings(n_ctx=256))
    app.state.pop_llm.close()
    assert reads == [model]
