"""The `pop-local` command line: thin click commands over the library functions."""

from __future__ import annotations

import sys
from typing import Optional

import click

from .errors import PopError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pop-local")
def cli() -> None:
    """pop-local: prefill-only pruning for llama.cpp models."""


def _progress_printer():
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
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="sample", file=sys.stderr, leave=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return progress


@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="POP GGUF to write")
@click.option("--layers", help='skip exactly these layers, e.g. "20-29" or "20,21,28"')
@click.option("--ratio", type=float, help="fraction of layers to skip (default 1/3)")
@click.option("--strategy", type=click.Choice(["tail", "score"]), default="tail", show_default=True,
              help="tail: the last layers as one block (the paper); score: lowest prefill importance")
@click.option("--no-calibrate", is_flag=True, help="write the keys without measuring importance (needs --layers)")
@click.option("--hf-model", help="calibrate on this transformers checkpoint (folder or hub id) instead of the GGUF")
@click.option("--data", type=click.Path(dir_okay=False), help="calibration prompts: .jsonl or text (blank-line separated)")
@click.option("--dataset", help="calibration prompts from a datasets-library dataset (needs the network)")
@click.option("--samples", type=int, default=64, show_default=True)
@click.option("--seq-len", type=int, default=256, show_default=True, help="longest prompt, in tokens")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="replace an existing output file")
def convert(model, output, layers, ratio, strategy, no_calibrate, hf_model, data, dataset, samples, seq_len, device, dtype,
            seed, force) -> None:
    """Make MODEL.gguf POP-ready: measure layer importance, choose the skip set, write a new GGUF.

    MODEL is a local GGUF file or a hub reference org/repo/file.gguf (downloaded with
    huggingface_hub into its cache; HF_HUB_OFFLINE=1 uses the cache only).

    \b
    Examples:
      pop-local convert model.gguf -o model.pop.gguf
      pop-local convert model.gguf -o model.pop.gguf --strategy score --samples 128
      pop-local convert model.gguf -o model.pop.gguf --layers 20-29 --no-calibrate
    """
    from .converter import convert as run_convert

    if no_calibrate and not layers:
        raise click.UsageError("--no-calibrate needs --layers")
    try:
        result = run_convert(model, output, layers=layers, ratio=ratio, strategy=strategy, calibrate=not no_calibrate,
                             hf_model=hf_model, data=data, dataset=dataset, samples=samples, seq_len=seq_len, device=device,
                             dtype=dtype, seed=seed, force=force, progress=_progress_printer())
    except PopError as e:
        raise click.ClickException(str(e)) from None
    from .layers import format_layers

    click.echo(f"wrote {result.output}: skip layers {format_layers(result.skip_layers)} ({result.seconds:.0f} s)")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--plot", type=click.Path(dir_okay=False), help="save the importance profiles as a PNG figure")
def inspect(model, plot: Optional[str]) -> None:
    """Show a GGUF's POP keys and its prefill/decode importance profiles.

    \b
    Example:
      pop-local inspect model.pop.gguf --plot importance.png
    """
    from . import keys
    from .importance_report import importance_chart, save_importance_plot
    from .metadata import read_pop_metadata

    try:
        meta = read_pop_metadata(model)
        click.echo(f"{model}: {meta.architecture}, {meta.n_layer} layers")
        if not meta.has_pop_keys:
            click.echo("no pop.* keys: the full model runs (convert it with `pop-local convert`)")
            return
        click.echo(f"{keys.SKIP_LAYERS} = {meta.skip_layers_text}  ({keys.ENABLED} = {str(meta.enabled).lower()})")
        for name, value in sorted(meta.extra.items()):
            if name not in (keys.IMPORTANCE_PREFILL, keys.IMPORTANCE_DECODE):
                click.echo(f"{name} = {value}")
        chart = importance_chart(meta)
        if chart:
            click.echo("\n" + "\n".join(chart))
        if plot:
            save_importance_plot(meta, plot)
            click.echo(f"saved {plot}")
    except PopError as e:
        raise click.ClickException(str(e)) from None


def main() -> None:
    cli(prog_name="pop-local")


if __name__ == "__main__":
    main()
