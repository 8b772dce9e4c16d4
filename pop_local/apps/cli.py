"""The `pop-local` command line: thin click commands over the library functions."""

from __future__ import annotations

import os
import sys
from typing import Optional

import click

from pop_local.errors import PopError, PopSettingError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pop-local")
def cli() -> None:
    """pop-local: prefill-only pruning for llama.cpp models."""


def _progress_printer(unit: str = "sample"):
    bars = {}

    def progress(stage: str, done: int, total: int) -> None:
        if total == 0:  # a message, not a bar
            click.echo(stage, err=True)
            return
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm ships with the converter extras
            if done == total:
                click.echo(f"{stage}: {done}/{total}", err=True)
            return
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit=unit, file=sys.stderr, leave=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return progress


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs (temporary files removed)."""


def _raise_terminated(signum, frame):
    raise Terminated()


class _Interrupted(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# what an interruption leaves behind, per command (every write goes through pop_local.format.atomic)
_INTERRUPTED = {"convert": "; nothing was written (the output and temporary files are removed)",
                "bench": "; nothing was written", "eval": "; nothing was written"}


# The one place where the library's names for settings and arguments become option names. The library
# names a field in its messages as `field` or `field=value` (Python's spelling); the CLI shows the option.
_FLAGS = {"rpc_servers": "--rpc", "pop": "--pop/--no-pop", "n_threads": "--threads", "kv_overrides": "--override-kv",
          "reuse_cache_across_settings": "--reuse-cache", "llama_log": "-v/--verbose", "passkey_lengths": "--passkey",
          "min_tokens": "--pop-min-tokens", "full_tail": "--pop-full-tail"}
_FALSE_FLAGS = {"calibrate": "--no-calibrate", "pop": "--no-pop"}  # `field=False` as its option


def _flag(field: str) -> str:
    """The option spelling of a settings field or a library argument: "--n-ctx", "--threads", "--verbose"."""
    if field not in _FLAGS and not field.replace("_", "").isalnum():
        return field  # not an argument (a GGUF key such as pop.prefill.skip_layers): as it is
    return [d for d in _FLAGS.get(field, "--" + field.replace("_", "-")).split("/") if d.startswith("--")][0]


def _render(message: str) -> str:
    """A library message in the command line's words: `samples` -> --samples, `kv=own` -> --kv own,
    `calibrate=False` -> --no-calibrate, `force=True` -> --force."""
    import re

    def option(m):
        field, value = m.group(1), m.group(3)
        if value is None:
            return _flag(field)
        if value == "False":
            return _FALSE_FLAGS.get(field, f"{_flag(field)} false")
        return _flag(field) if value == "True" else f"{_flag(field)} {value}"

    return re.sub(r"`([a-z][a-z0-9_]*)(=([^`]+))?`", option, message)


def _fail_cleanly(fn):
    """PopError -> one-line message in the command line's words, exit 1 (click's usage errors keep exit
    2); Ctrl-C or SIGTERM -> one line saying so, exit 130 or 143."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PopSettingError as e:
            raise click.ClickException(f"{_flag(e.field)}: {_render(e.reason)}") from None
        except PopError as e:
            raise click.ClickException(_render(str(e))) from None
        except KeyboardInterrupt as e:
            click.echo("", err=True)  # a progress bar may hold the line: the message gets its own
            how, code = ("SIGTERM", 143) if isinstance(e, Terminated) else ("Ctrl-C", 130)
            command = fn.__name__.replace("_command", "")
            raise _Interrupted(f"interrupted ({how}){_INTERRUPTED.get(command, '')}", code) from None

    return wrapper


def _checked(check):
    """A click callback that runs the library's own check of an option's value (defined once, there), as a
    usage error naming the option."""
    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return check(value)
        except PopSettingError as e:
            raise click.BadParameter(_render(e.reason)) from None

    return callback


def _origins(value):
    from .server_access import parse_origins

    try:
        return parse_origins(value)
    except PopError as e:
        raise click.BadParameter(str(e)) from None


def _max_kl(value):
    from pop_local.format.frontier import parse_budget

    return parse_budget(value, None).max_kl


def _target_speedup(value):
    from pop_local.format.frontier import parse_budget

    return parse_budget(None, value).target_speedup


def _max_ratio(value):
    from pop_local.format.frontier import check_max_ratio

    return check_max_ratio(value)


@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="POP GGUF to write")
@click.option("--layers", help='skip exactly these layers, e.g. "20-29" or "20,21,28"')
@click.option("--ratio", type=float, help="fraction of layers to skip (default 1/3)")
@click.option("--strategy", type=click.Choice(["tail", "score"]), default="tail", show_default=True,
              help="tail: the last layers as one block (the paper); score: lowest prefill importance")
@click.option("--no-calibrate", is_flag=True, help="write the keys without measuring importance (needs --layers)")
@click.option("--hf-model", help="calibrate on this transformers checkpoint (folder or hub id) instead of the GGUF")
@click.option("--data", type=click.Path(dir_okay=False),
              help="calibration prompts: .jsonl or text (blank-line separated)")
@click.option("--dataset", help="calibration prompts from a datasets-library dataset (needs the network)")
@click.option("--samples", type=int, help="calibration samples [default: 64; 16 for a model file over 512 MiB]")
@click.option("--seq-len", type=int, default=256, show_default=True, help="longest prompt, in tokens")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-kl", callback=_checked(_max_kl),
              help='quality budget: the fastest skip set whose held-out KL vs the full model is at most this '
                   '(default "paper": the KL of the paper\'s last third with own K/V on this model)')
@click.option("--target-speedup", type=float, callback=_checked(_target_speedup),
              help="instead: the most faithful skip set whose ideal prefill speedup at 2048 tokens reaches this")
@click.option("--max-ratio", type=float, default=0.5, show_default=True, callback=_checked(_max_ratio),
              help="largest fraction of layers a budget may skip")
@click.option("--kv", type=click.Choice(["auto", "own", "fitted"]), default="auto", show_default=True,
              help="K/V of pruned layers: auto (the budget takes the better of the two per skip set), own "
                   "projections or fitted ones stored in the file; own/fitted without a budget option give the "
                   "paper's last third")
@click.option("--kv-type", type=click.Choice(["auto", "f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]),
              default="auto", show_default=True, help="tensor type of fitted projections (auto: the file's own)")
@click.option("--max-memory", type=float, envvar="POP_LOCAL_MAX_MEMORY",
              help="GB the calibration may use (default: the memory available); refuses before loading if the "
                   "estimate is higher")
@click.option("--in-memory", is_flag=True,
              help="calibrate with the whole model in memory (float32) instead of one layer at a time; for comparisons")
@click.option("--answer-check/--no-answer-check", default=True, show_default=True,
              help="with the default budget, keep a skip set only if it keeps the full model's answers to "
                   "generated needle and document questions of 1k tokens, four per document, until the full model "
                   "has 40 right (95% of its score, paired interval above -10 points; measured in llama.cpp)")
@click.option("--keep-candidates", type=click.Path(file_okay=False, writable=True), metavar="DIR",
              help="keep each fitted candidate the answer check tried in DIR (SKIP-fitted.pop.gguf, a complete "
                   "POP GGUF each), to run or measure yourself")
@click.option("--force", is_flag=True, help="replace an existing output file")
@_fail_cleanly
def convert(model, output, layers, ratio, strategy, no_calibrate, hf_model, data, dataset, samples, seq_len, device,
            dtype, seed, max_kl, target_speedup, max_ratio, kv, kv_type, max_memory, in_memory, answer_check,
            keep_candidates, force) -> None:
    """Make MODEL.gguf POP-ready: measure what each skip set costs, pick one, write a new GGUF.

    By default every candidate (the last 1 .. half of the layers) is measured on held-out
    calibration samples, with the layers' own and with fitted K/V, and the fastest one at least as
    faithful in held-out KL as the paper's setting (last third, own K/V) that keeps the full model's
    answers to generated needle and document questions is written (--answer-check), with the whole
    frontier.

    MODEL is a local GGUF file or a hub reference org/repo/file.gguf (downloaded with
    huggingface_hub into its cache; HF_HUB_OFFLINE=1 uses the cache only).

    \b
    Examples:
      pop-local convert model.gguf -o model.pop.gguf
      pop-local convert model.gguf -o model.pop.gguf --max-kl 0.1
      pop-local convert model.gguf -o model.pop.gguf --target-speedup 1.6
      pop-local convert model.gguf -o model.pop.gguf --kv own           # the paper: last third, own K/V
      pop-local convert model.gguf -o model.pop.gguf --layers 20-29 --no-calibrate
      pop-local convert model.gguf -o model.pop.gguf --kv fitted
    """
    from pop_local.converter import convert as run_convert

    if no_calibrate and not layers:
        raise click.UsageError("--no-calibrate needs --layers")
    result = run_convert(model, output, layers=layers, ratio=ratio, strategy=strategy, calibrate=not no_calibrate,
                         hf_model=hf_model, data=data, dataset=dataset, samples=samples, seq_len=seq_len, device=device,
                         dtype=dtype, seed=seed, force=force, kv=kv, kv_type=kv_type, max_kl=max_kl,
                         target_speedup=target_speedup, max_ratio=max_ratio, max_memory=max_memory, in_memory=in_memory,
                         answer_check=answer_check, keep_candidates=keep_candidates,
                         progress=_progress_printer("step"))
    from pop_local.format import keys
    from pop_local.format.layers import format_layers

    how = ""
    if keys.FRONTIER_CHOSEN in result.extra:
        row = result.extra
        i = row[keys.FRONTIER_CHOSEN]
        kv_used = row[keys.KV_METHOD]
        kl = row[keys.FRONTIER_KL_FITTED if kv_used == "fitted" else keys.FRONTIER_KL_OWN][i]
        how = (f", {kv_used} K/V; held-out KL {kl:.4f}, ideal speedup {row[keys.FRONTIER_SPEEDUP_2048][i]:.2f}x at "
               f"2048 tokens ({row[keys.BUDGET]})")
        if keys.FRONTIER_CHECK in row:
            from pop_local.format.metadata import read_pop_metadata

            frontier = read_pop_metadata(result.output).frontier
            items, length, right = frontier.check
            got = frontier.choice.check(kv_used)
            how += (f"; answers to {items} needle and document questions of {length} tokens: the full model "
                    f"{right}, this set {right - got.lost} of those ({got.text(right)})")
    peak = f", peak memory {result.peak_bytes / 2**30:.1f} GB" if result.peak_bytes else ""
    click.echo(f"wrote {result.output}: skip layers {format_layers(result.skip_layers)}{how} "
               f"({result.seconds:.0f} s{peak})")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--plot", type=click.Path(dir_okay=False),
              help="save the importance profiles (and the frontier: quality against speed) as a PNG figure")
@_fail_cleanly
def inspect(model, plot: Optional[str]) -> None:
    """Show a GGUF's POP keys, its quality/speed frontier and its importance profiles.

    \b
    Example:
      pop-local inspect model.pop.gguf --plot importance.png
    """
    from pop_local.format import keys
    from pop_local.format.metadata import read_pop_metadata
    from pop_local.measure.importance_report import importance_chart, save_importance_plot

    meta = read_pop_metadata(model)
    click.echo(f"{model}: {meta.architecture}, {meta.n_layer} layers")
    if not meta.has_pop_keys:
        click.echo("no pop.* keys: the full model runs (convert it with `pop-local convert`)")
        return
    click.echo(f"{keys.SKIP_LAYERS} = {meta.skip_layers_text}  ({keys.ENABLED} = {str(meta.enabled).lower()})")
    shown_as_table = keys.FRONTIER_ARRAYS if meta.frontier else ()
    for name, value in sorted(meta.extra.items()):
        if name not in (keys.IMPORTANCE_PREFILL, keys.IMPORTANCE_DECODE) + shown_as_table:
            click.echo(f"{name} = {value}")
    if meta.frontier:
        from pop_local.format.frontier import frontier_table

        f = meta.frontier
        click.echo(f"\nquality/speed frontier ({f.budget}; KL and top-1 vs the full model on {f.held_out[0]} held-out "
                   f"samples, {f.held_out[1]} response tokens; ideal = FLOP-ideal prefill speedup)")
        click.echo(frontier_table(f, meta.n_layer))
    chart = importance_chart(meta)
    if chart:
        click.echo("\n" + "\n".join(chart))
    if plot:
        save_importance_plot(meta, plot)
        click.echo(f"saved {plot}")


def _check_can_listen(address: str, port: int, label: Optional[str] = None) -> None:
    """A PopError naming host:port when nothing could listen there (in use, not an address here)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, port))
    except OSError as e:
        raise PopError(f"cannot listen on {label or address}:{port} ({e.strerror})") from None


@cli.command()
@click.option("--rpc", "rpc_servers", metavar="HOST:PORT[,...]", help="also list these RPC servers' devices")
@_fail_cleanly
def devices(rpc_servers) -> None:
    """List the compute devices this build of llama.cpp sees (what --n-gpu-layers offloads to).

    \b
    Examples:
      pop-local devices
      pop-local devices --rpc 192.168.1.20:50052
    """
    from pop_local.runtime.devices import backends, devices as found

    if rpc_servers:
        from pop_local.runtime.rpc import use_servers

        load, _ = _settings({"rpc_servers": rpc_servers})
        use_servers(load.rpc_servers)
    names, listed = backends(), found()
    click.echo(f"backends in this build: {', '.join(n for n in names if not n.startswith('RPC['))}")
    for d in listed:
        memory = f"{d.memory_free / 2**30:.1f} of {d.memory_total / 2**30:.1f} GiB free" if d.memory_total else ""
        click.echo(f"  {d.name:<10} {d.kind:<5} {d.description}  {memory}".rstrip())
    if not any(d.offloads for d in listed):
        if "Vulkan" in names:
            click.echo("no GPU: Vulkan found none it uses (a software device such as lavapipe is used only when "
                       "selected: GGML_VK_VISIBLE_DEVICES=0)")
        else:
            click.echo("no GPU: every layer runs on the CPU (docs/gpu.md: how to build for CUDA, Metal or Vulkan)")


@cli.command(name="rpc-server")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; the protocol has no authentication: only trusted networks")
@click.option("--port", type=click.IntRange(1, 65535), default=50052, show_default=True)
@click.option("--threads", type=click.IntRange(1, 1024), default=max(1, (os.cpu_count() or 2) // 2),
              show_default=True, help="threads of the CPU device")
@click.option("--device", "device_names", help="devices to serve, comma separated, as `pop-local devices` names "
                                              "them (default: every GPU, else the CPU)")
@_fail_cleanly
def rpc_server(host, port, threads, device_names) -> None:
    """Serve this machine's devices to another host's pop-local (llama.cpp's RPC backend).

    The other host adds them with --rpc HOST:PORT and splits the model over them; POP's pruned
    graph runs there unchanged. Ctrl-C stops the server.

    \b
    Examples:
      pop-local rpc-server --port 50052
      pop-local chat model.pop.gguf --rpc 127.0.0.1:50052      # on the other host: its address
    """
    import socket
    import threading

    from pop_local.runtime.rpc import serve_devices

    try:
        address = socket.gethostbyname(host)  # ggml's server takes an IPv4 address
    except OSError:
        raise PopError(f"cannot listen on {host}: not an IPv4 address or known host name") from None
    _check_can_listen(address, port, label=host)  # a clear message now instead of ggml's own later
    if address != "127.0.0.1":
        click.echo(f"WARNING: listening on {host} ({address}): anyone who can reach this port can run code on its "
                   "devices and read what they hold; the RPC protocol has no authentication or encryption. "
                   "Use it only on a network you trust.", err=True)
    names = [n.strip() for n in device_names.split(",") if n.strip()] if device_names else []
    failure = []

    def run():
        try:
            serve_devices(address, port, threads, names)
        except PopError as e:
            failure.append(e)

    # ggml's server loop never returns; in a thread, the main thread stays free to take Ctrl-C
    server = threading.Thread(target=run, name="rpc-server", daemon=True)
    server.start()
    try:
        while server.is_alive():
            server.join(0.2)
    except KeyboardInterrupt as e:
        click.echo(f"\nrpc-server stopped ({'SIGTERM' if isinstance(e, Terminated) else 'Ctrl-C'})", err=True)
        sys.stdout.flush()
        os._exit(0)  # the server thread is inside ggml's accept loop: end the process without joining it
    if failure:
        raise failure[0]
    raise PopError(f"the RPC server on {host}:{port} stopped")


# --- shared by the model-running commands -----------------------------------------------------------
# Their load and POP options are built from runtime/settings.py (the one definition the server and the
# integrations use too): same names, defaults, ranges and help everywhere. The values are checked once,
# when the command builds its settings from them (_settings), before anything is read or loaded.

# where the command line says it differently from the library's field description
_CLI_HELP = {"pop": "force POP on or off (default: as the file says)",
             "kv_overrides": "override a GGUF key at load, e.g. pop.prefill.skip_layers=str:20-29 "
                             "(TYPE int, float, bool or str; repeatable)"}


def _parse_kv_override(ctx, param, values):
    """llama.cpp's --override-kv spelling KEY=TYPE:VALUE (TYPE int, float, bool or str) -> {key: value}."""
    found = {}
    for text in values or ():
        key, eq, rest = text.partition("=")
        kind, colon, raw = rest.partition(":")
        if not eq or not colon or not key:
            raise click.BadParameter(f"expected KEY=TYPE:VALUE, e.g. pop.prefill.enabled=bool:false (got {text!r})")
        try:
            if kind == "bool":
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                found[key] = raw.lower() in ("true", "1")
            elif kind in ("int", "float", "str"):
                found[key] = {"int": int, "float": float, "str": str}[kind](raw)
            else:
                raise click.BadParameter(f"{text!r}: TYPE must be int, float, bool or str, got {kind!r}")
        except ValueError:
            raise click.BadParameter(f"{text!r}: {raw!r} is not a {kind}") from None
    return found or None


def _settings_options(*, exclude=()):
    """click options for the LoadFields and PopFields settings, except `exclude`."""
    from pop_local.runtime.settings import LoadFields, PopFields

    opts = []
    for field_cls in (PopFields, LoadFields):
        for name, f in field_cls.model_fields.items():
            if name in exclude:
                continue
            decl = _FLAGS.get(name, "--" + name.replace("_", "-"))
            common = dict(help=_CLI_HELP.get(name, f.description or ""))
            kind = f.annotation
            if name == "kv_overrides":
                opts.append(click.option(decl, name, multiple=True, metavar="KEY=TYPE:VALUE",
                                         callback=_parse_kv_override, **common))
            elif name == "pop":
                opts.append(click.option(decl, name, default=None, **common))
            elif name == "kv_mode":
                opts.append(click.option(decl, name, type=click.Choice(["fitted", "own"]), **common))
            elif kind is bool:
                opts.append(click.option(*decl.split("/"), name, is_flag=True, default=f.default, **common))
            else:  # text (a skip set, endpoints, shares) or a number: the settings parse and check it
                base = int if kind in (int, Optional[int]) else str
                opts.append(click.option(decl, name, type=base, default=f.default,
                                         show_default=f.default is not None, **common))

    def decorate(fn):
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return decorate


def _settings(options, **fixed):
    """(LoadSettings, PopSettings) from a command's option values (plus `fixed` load values), checked
    once; a bad value is a usage error naming its option (exit 2), before anything is read or loaded."""
    from pop_local.runtime.settings import LoadFields, LoadSettings, PopFields, PopSettings, build

    load = {k: options.pop(k) for k in list(options) if k in LoadFields.model_fields}
    pop = {k: options.pop(k) for k in list(options) if k in PopFields.model_fields}
    try:
        return build(LoadSettings, {**load, **fixed}), build(PopSettings, pop)
    except PopSettingError as e:
        raise click.BadParameter(_render(e.reason), param_hint=f"'{_flag(e.field)}'") from None


def _open(meta, load, pop, **llama_kwargs):
    """Load the model with the command's settings; prints the notes (full model runs, ...)."""
    from pop_local.runtime.models import open_model

    loaded = open_model(meta, load, pop, **llama_kwargs)
    _print_notes(loaded.notes)
    return loaded


def _model_meta(model):
    """The metadata of MODEL (None: the embedded default model, made POP-ready on first use)."""
    from pop_local.converter.default_model import model_meta

    return model_meta(model, _progress_printer())


def _print_notes(notes) -> None:
    for note in notes:
        click.secho(f"note: {_render(note)}", fg="yellow", err=True)


# --- chat ----------------------------------------------------------------------------------------

@cli.command()
@click.argument("model", required=False)
@click.option("--system", "system_prompt", help="system prompt")
@click.option("--max-tokens", type=int, default=512, show_default=True, help="longest reply, in tokens")
@click.option("--temperature", type=float, default=0.7, show_default=True)
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False),
              help="an image for the first message (repeatable; needs --mmproj); in the chat: /image PATH")
@_settings_options()
@_fail_cleanly
def chat(model, system_prompt, max_tokens, temperature, images, **options) -> None:
    """Chat with MODEL (default: SmolLM2-135M-Instruct, made POP-ready on first use).

    Prompts run pruned, replies stream from the full model. After each reply: time to first
    token, tokens/s and how many prompt tokens ran pruned. With input piped in, each line is one
    message (or command) and replies go to stdout, statistics to stderr. After /pop on|off the
    conversation is re-evaluated, so replies equal a fresh run with the new setting (--reuse-cache
    keeps the earlier turns' cache instead).

    Images: with --mmproj (the model's projector GGUF), /image PATH attaches an image to the next
    message (--image PATH to the first); image tokens run pruned like prompt text.

    \b
    Examples:
      pop-local chat
      pop-local chat model.pop.gguf --system "You are terse."
      printf 'Hi\\nWhat is 2+2?\\n' | pop-local chat model.pop.gguf
      echo 'What is in the picture?' | pop-local chat vlm.pop.gguf --mmproj mmproj.gguf --image cat.png
    """
    from pop_local.runtime.multimodal import image_url

    from .chat import ChatSession
    from .repl import run_repl

    if max_tokens < 1:
        raise click.BadParameter(f"at least 1, got {max_tokens}", param_hint="--max-tokens")
    if not 0 <= temperature < float("inf"):
        raise click.BadParameter(f"a number of at least 0, got {temperature}", param_hint="--temperature")
    load, pop = _settings(options)
    if images and not load.mmproj:
        raise click.BadParameter("images need the model's projector: add --mmproj PROJECTOR.gguf", param_hint="--image")
    urls = [image_url(path) for path in images]  # read now: a bad image fails before the model loads
    loaded = _open(_model_meta(model), load, pop)
    session = ChatSession(loaded.llm, system=system_prompt, max_tokens=max_tokens, temperature=temperature)
    run_repl(session, loaded, interactive=sys.stdin.isatty(), images=urls)


# bench and eval run POP on and off, with each K/V mode, themselves
_MODES_RUN_BY_THE_COMMAND = ("pop", "kv_mode", "reuse_cache_across_settings", "chat_format")


# --- bench ---------------------------------------------------------------------------------------

def _parse_ctx(value: str, option: str = "--ctx"):
    try:
        ctx = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated token counts, got {value!r}", param_hint=option) from None
    if not ctx or min(ctx) < 2:
        raise click.BadParameter("give one or more token counts of at least 2", param_hint=option)
    return ctx


@cli.command()
@click.argument("model", required=False)
@click.option("--ctx", default="512,2048", show_default=True, help="prompt lengths in tokens, comma separated")
@click.option("--repeats", type=int, default=5, show_default=True, help="timed runs per mode (median reported)")
@click.option("--decode-tokens", type=int, default=64, show_default=True, help="tokens for the decode measurement")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the result as JSON")
@click.option("--plot", type=click.Path(dir_okay=False), help="save speedup against prompt length as a PNG")
@click.option("--image", help="instead: prefill of this image and --question (a file, or WIDTHxHEIGHT for a "
                              "synthetic picture; needs --mmproj)")
@click.option("--question", default=None,
              help="the question after --image  [default: Describe this picture in detail.]")
@_settings_options(exclude=_MODES_RUN_BY_THE_COMMAND + ("n_ctx", "n_batch", "seed"))
@_fail_cleanly
def bench(model, ctx, repeats, decode_tokens, json_path, plot, image, question, **options) -> None:
    """Prefill time full vs POP, decode speed both ways, measured and FLOP-ideal speedup.

    Full and POP alternate in one process on one loaded model, after a warm-up; the table shows
    medians and the spread (min-max). MODEL defaults to the embedded SmolLM2-135M-Instruct.
    With --image (and --mmproj): the prefill of an image and a question instead, with its image
    token count (image encoding included in both times).

    \b
    Examples:
      pop-local bench model.pop.gguf
      pop-local bench model.pop.gguf --ctx 256,1024,4096 --json bench.json --plot speedup.png
      pop-local bench model.gguf --skip-layers 20-29
      pop-local bench vlm.pop.gguf --mmproj mmproj.gguf --image photo.jpg
    """
    from pop_local.format.atomic import write_json
    from pop_local.measure.bench import format_table, run_bench, save_speedup_plot
    from pop_local.measure.provenance import provenance
    from pop_local.runtime.models import check_context

    load, pop = _settings(options)
    if image is not None or question is not None:
        return _bench_image(model, image, question, repeats, json_path, plot, load, pop)
    ctx_list = _parse_ctx(ctx)
    meta = _model_meta(model)
    trained = check_context(meta, max(ctx_list), "ctx")
    decode_ctx = min(ctx_list)
    if trained:
        decode_ctx = max(1, min(decode_ctx, trained - decode_tokens))
    needed = max(max(ctx_list), decode_ctx + decode_tokens)
    loaded = _open(meta, load.model_copy(update={"n_ctx": needed, "n_batch": needed}), pop)
    result = run_bench(loaded.llm, ctx_list, repeats=repeats, decode_tokens=decode_tokens, decode_ctx=decode_ctx,
                       progress=_progress_printer("step"))
    click.echo(format_table(result))
    if json_path:
        write_json(json_path, {**result, **provenance()})
        click.echo(f"saved {json_path}", err=True)
    if plot:
        save_speedup_plot(result, plot)
        click.echo(f"saved {plot}", err=True)


def _bench_image(model, image, question, repeats, json_path, plot, load, pop) -> None:
    from pop_local.format.atomic import write_json
    from pop_local.measure.image_bench import DEFAULT_QUESTION, format_image_table, run_image_bench
    from pop_local.measure.provenance import provenance
    from pop_local.runtime.multimodal import image_url, parse_image_arg

    if image is None:
        raise click.BadParameter("--question goes with --image", param_hint="--question")
    if not load.mmproj:
        raise click.BadParameter("an image needs the model's projector: add --mmproj PROJECTOR.gguf",
                                 param_hint="--image")
    if plot:
        raise click.BadParameter("the image benchmark has one row: no plot", param_hint="--plot")
    picture = image_url(parse_image_arg(image))  # read now: a bad image fails before the model loads
    loaded = _open(_model_meta(model), load, pop)
    result = run_image_bench(loaded.llm, picture, image_label=os.path.basename(image), repeats=repeats,
                             question=question or DEFAULT_QUESTION, progress=_progress_printer("step"))
    click.echo(format_image_table(result))
    if json_path:
        write_json(json_path, {**result, **provenance()})
        click.echo(f"saved {json_path}", err=True)


# --- eval ----------------------------------------------------------------------------------------

@cli.command(name="eval")
@click.argument("model", required=False)
@click.option("--ctx", default="512,1024", show_default=True, help="context lengths for perplexity, top-1 and KL")
@click.option("--continuation", type=int, default=64, show_default=True, help="tokens scored after each context")
@click.option("--windows", type=int, default=2, show_default=True, help="text windows per context length")
@click.option("--passkey", "passkey_lengths", default="512,1024", show_default=True,
              help="passkey prompt lengths, comma separated (\"\" to skip)")
@click.option("--trials", type=int, default=4, show_default=True, help="passkey trials per length (key depths spread)")
@click.option("--data", type=click.Path(dir_okay=False),
              help="UTF-8 text file to evaluate on (default: the bundled passage); with --answers, a .jsonl file "
                   "replaces the built-in prompt set (docs/commands.md)")
@click.option("--answers", is_flag=True,
              help="also compare greedy replies with the full model's: short chat questions and long-document "
                   "questions (identical replies, first difference, F1, answer found)")
@click.option("--answer-tokens", type=click.IntRange(1, 4096), default=48, show_default=True,
              help="reply length for --answers")
@click.option("--seed", type=int, default=0, show_default=True, help="seed for the pass keys")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the result as JSON")
@_settings_options(exclude=_MODES_RUN_BY_THE_COMMAND + ("n_ctx", "n_batch", "seed"))
@_fail_cleanly
def eval_command(model, ctx, continuation, windows, passkey_lengths, trials, data, answers, answer_tokens, seed,
                 json_path, **options) -> None:
    """Quality of POP: full model, POP, POP without boundary handling, static removal; and answers.

    Perplexity of a continuation given the context, top-1 agreement and KL divergence against the
    full model, and passkey-retrieval accuracy, all in one run on one loaded model. --answers adds
    greedy replies to a prompt set compared with the full model's (--ctx "" --passkey "" --answers:
    the replies only).

    \b
    Examples:
      pop-local eval model.pop.gguf
      pop-local eval model.pop.gguf --ctx 1024,4096 --passkey 1024,4096 --data essay.txt --json eval.json
      pop-local eval model.pop.gguf --answers --json eval.json
      pop-local eval model.pop.gguf --ctx "" --passkey "" --answers --data my-prompts.jsonl
    """
    from pop_local.format.atomic import write_json
    from pop_local.measure.evaluate import format_eval_table, run_eval
    from pop_local.measure.provenance import provenance
    from pop_local.runtime.models import check_context

    ctx_list = _parse_ctx(ctx) if ctx.strip() or not answers else []
    load, pop = _settings(options)
    passkeys = _parse_ctx(passkey_lengths, "--passkey") if passkey_lengths.strip() else []
    if not ctx_list and passkeys:
        raise click.BadParameter('--ctx "" (replies only) needs --passkey "" too', param_hint="--ctx")
    text, answer_items = None, None
    if data and answers and data.endswith(".jsonl"):
        from pop_local.measure.answers import load_answer_set

        answer_items = load_answer_set(data)  # checked before the model loads
    elif data:
        try:
            with open(data, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise PopError(f"{data}: cannot read as UTF-8 text ({getattr(e, 'strerror', None) or e})") from None
    meta = _model_meta(model)
    longest = max([c + continuation for c in ctx_list] + passkeys + [0])
    if longest:
        check_context(meta, longest, "ctx")  # the longest context plus the continuation, or a passkey prompt
    # the built-in long prompts are under 2,100 tokens with the chat template (SmolLM2 and Gemma tokenizers)
    n_ctx = max(longest + 16, 2304 + answer_tokens if answers else 0)
    if answers and meta.context_length:
        n_ctx = min(n_ctx, max(longest + 16, meta.context_length))
    loaded = _open(meta, load.model_copy(update={"n_ctx": n_ctx, "n_batch": 512}), pop)
    result: dict = {}
    if ctx_list:
        result = run_eval(loaded.llm, ctx=ctx_list, continuation=continuation, windows=windows,
                          passkey_lengths=passkeys, passkey_trials=trials, text=text,
                          text_name=os.path.basename(data) if text is not None else "bundled passage",
                          seed=seed, progress=_progress_printer("step"))
        click.echo(format_eval_table(result))
    if answers:
        from pop_local.measure.answers import format_answers_table, run_answers

        result["answers"] = run_answers(loaded.llm, answer_items, max_tokens=answer_tokens,
                                        data_name=os.path.basename(data) if answer_items else "built-in set",
                                        progress=_progress_printer("reply"))
        click.echo(format_answers_table(result["answers"]))
    if json_path:
        write_json(json_path, {**result, **provenance()})
        click.echo(f"saved {json_path}", err=True)


# --- serve ---------------------------------------------------------------------------------------

@cli.command()
@click.argument("model", required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0: every interface)")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--alias", help="model name clients use (default: the file name)")
@click.option("--api-key", envvar="POP_LOCAL_API_KEY", help="require this bearer key (or set POP_LOCAL_API_KEY)")
@click.option("--insecure-no-key", is_flag=True,
              help="listen beyond loopback without --api-key: anyone who reaches the address uses the model")
@click.option("--allowed-origins", metavar="ORIGIN[,...]", callback=lambda ctx, param, value: _origins(value),
              help="web pages (scheme://host[:port], 'null' or '*') allowed to call the server beside local ones "
                   "(or set POP_LOCAL_ORIGINS)")
@click.option("--fetch-image-urls", is_flag=True,
              help="fetch http(s) image URLs in chat requests (10 s, 20 MiB, 3 redirects); default: data: URIs only")
@_settings_options()
@_fail_cleanly
def serve(model, host, port, alias, api_key, insecure_no_key, allowed_origins, fetch_image_urls, **options) -> None:
    """Serve MODEL over an OpenAI-compatible HTTP API with POP on.

    /v1/chat/completions, /v1/completions (both with streaming), /v1/embeddings, /v1/models,
    and GET /pop/stats. Uses llama-cpp-python's server; listens on 127.0.0.1 unless --host says otherwise
    (beyond loopback it needs --api-key). Browser pages may call it from local origins only unless
    --allowed-origins names others; chat images come as data: URIs unless --fetch-image-urls.

    \b
    Examples:
      pop-local serve model.pop.gguf --port 8080
      curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
           -d '{"messages": [{"role": "user", "content": "Hi"}]}'
    """
    from pop_local.runtime.models import check_context, pop_notes, pop_state_text

    from .server import create_pop_app, serve as run_server
    from .server_access import check_binding, is_loopback

    load, pop = _settings(options)
    check_binding(host, api_key, insecure_no_key)  # before a first start's download
    meta = _model_meta(model)
    check_context(meta, load.n_ctx)
    _check_can_listen(host, port)  # a clear message now instead of a traceback after the model has loaded
    name = alias or os.path.basename(meta.path)
    app = create_pop_app(meta, load, pop, model_alias=name, api_key=api_key, host=host, port=port,
                         allowed_origins=allowed_origins, insecure_no_key=insecure_no_key,
                         fetch_image_urls=fetch_image_urls)
    llm = app.state.pop_llm
    _print_notes(pop_notes(llm, meta))
    if not is_loopback(host):
        click.echo(f"note: listening on {host}, beyond this machine, over plain HTTP"
                   + ("" if api_key else ", with no API key: anyone who reaches it uses the model"), err=True)
    click.echo(f"serving {name} ({pop_state_text(llm)}) at http://{host}:{port}/v1 - Ctrl-C stops", err=True)
    try:
        run_server(app, host=host, port=port, log_level="info" if load.llama_log else "warning")
    except KeyboardInterrupt as e:  # uvicorn shuts down gracefully, then raises the signal again
        click.echo(f"server stopped ({'SIGTERM' if isinstance(e, Terminated) else 'Ctrl-C'})", err=True)
        return
    click.echo("server stopped", err=True)


def main() -> None:
    import signal

    # SIGTERM runs the same clean-up as Ctrl-C (serve: uvicorn installs its own graceful handlers)
    signal.signal(signal.SIGTERM, _raise_terminated)
    cli(prog_name="pop-local")


if __name__ == "__main__":
    main()
