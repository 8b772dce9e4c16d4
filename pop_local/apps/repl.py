"""The terminal side of `pop-local chat`: the input loop, /commands, streaming with Ctrl-C."""

from __future__ import annotations

import signal
import sys
import threading

import click

from pop_local.format.layers import format_layers
from pop_local.runtime.models import pop_state_text

__all__ = ["run_repl", "CHAT_HELP"]

CHAT_HELP = ("commands: /pop on|off  /stats  /reset  /system TEXT  /image PATH  /exit  "
             "(Ctrl-C stops a reply, Ctrl-D quits)")


def run_repl(session, loaded, interactive: bool, images=()) -> None:
    """Read messages until /exit or end of input; a terminal gets a prompt, piped input one message per line.
    `images` (and those /image adds) go with the next message."""
    pending = list(images)
    if interactive:
        try:
            import readline  # noqa: F401  line editing and history for input()
        except ImportError:  # pragma: no cover - Windows
            pass
        click.secho(f"{loaded.name}: {pop_state_text(loaded.llm)}. {CHAT_HELP}", dim=True, err=True)

    def lines():
        while True:
            try:
                if interactive:
                    line = input(click.style("> ", fg="green", bold=True))
                else:
                    line = sys.stdin.readline()
                    if not line:
                        return
            except EOFError:
                click.echo(err=True)
                return
            except KeyboardInterrupt:
                click.echo("\n(/exit or Ctrl-D to quit)", err=True)
                continue
            yield line.strip()

    for line in lines():
        if not line:
            continue
        if line.startswith("/image"):
            _add_image(loaded, line, pending)
            continue
        if line.startswith("/"):
            if not _chat_command(session, loaded, line):
                return
            continue
        _stream_reply(session, line, pending)
        pending.clear()


def _add_image(loaded, line: str, pending: list) -> None:
    """/image PATH: read the image now (a bad file is one line, the chat goes on); it goes with the next message."""
    from pop_local.errors import PopError
    from pop_local.runtime.multimodal import image_url

    path = line.partition(" ")[2].strip()
    if not path:
        click.echo("usage: /image PATH (a PNG, JPEG, GIF or BMP file; it goes with your next message)", err=True)
        return
    if not loaded.llm.multimodal:
        click.echo("this model takes no images: start the chat with --mmproj PROJECTOR.gguf", err=True)
        return
    try:
        pending.append(image_url(path))
    except PopError as e:
        click.echo(f"error: {e}", err=True)
        return
    click.echo(f"image {len(pending)} added: it goes with your next message", err=True)


def _chat_command(session, loaded, line: str) -> bool:
    """Run a /command; False ends the chat."""
    llm = loaded.llm
    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    if cmd in ("/exit", "/quit"):
        return False
    if cmd == "/pop":
        if arg in ("on", "off"):
            llm.pop_enabled = arg == "on"
        elif arg:
            click.echo("usage: /pop on|off", err=True)
            return True
        state = "on" if llm.pop_enabled else "off"
        detail = f", skipping layers {format_layers(llm.skip_layers)}" if llm.pop_active else (
            "" if llm.pop_enabled is False else " (inactive: the full model runs)")
        if arg and session.messages and not llm.reuse_cache_across_settings:
            detail += " (the conversation so far is re-evaluated with this setting on the next turn)"
        click.echo(f"POP {state}{detail}", err=True)
    elif cmd == "/stats":
        t = session.totals()
        images = (f", {t['image_pruned_tokens']} of {t['image_tokens']} image tokens pruned" if t["image_tokens"]
                  else "")
        click.echo(f"model {loaded.name}; POP {'on' if llm.pop_enabled else 'off'}, skip set "
                   f"{format_layers(llm.skip_layers) or 'empty'}; {t['turns']} replies; prompt tokens "
                   f"{t['prompt_tokens_evaluated']} evaluated ({t['pruned_tokens']} pruned{images}), "
                   f"{t['prompt_tokens_cached']} cached; {t['completion_tokens']} generated; "
                   f"mean time to first token {t['mean_ttft_ms']:.0f} ms", err=True)
    elif cmd == "/reset":
        session.reset()
        click.echo("conversation cleared", err=True)
    elif cmd == "/system":
        session.system = arg or None
        click.echo("system prompt " + ("set" if arg else "cleared"), err=True)
    else:
        click.echo(f"unknown command {cmd}; {CHAT_HELP}", err=True)
    return True


def _stream_reply(session, text: str, images=()) -> None:
    """Print the reply as it streams; Ctrl-C (SIGINT) ends this reply, not the program."""
    interrupted = threading.Event()
    use_handler = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set()) if use_handler else None
    stream = session.reply(text, images)
    try:
        for piece in stream:
            click.echo(piece, nl=False)
            sys.stdout.flush()
            if interrupted.is_set():
                break
    finally:
        stream.close()
        if use_handler:
            signal.signal(signal.SIGINT, previous)
    click.echo()
    stats = session.last
    if stats.finish_reason == "interrupted":
        click.secho("[stopped]", fg="yellow", err=True)
    click.secho(stats.summary(), dim=True, err=True)
