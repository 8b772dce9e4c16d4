"""The answers suite for one model: RULER's generated tasks and pop-local's document questions at each
prompt length, for full, the default conversion, the paper's set and two shallower sets; then prefill
speed of the same settings at the same lengths.

    python benchmarks/suite.py smollm2 --lengths 1024,2048,4096,8192 --items 1024=50,2048=50,4096=20,8192=10
    python benchmarks/suite.py qwen2.5-coder-1.5b --tasks niah_multikey_2,pop_docqa --lengths 1024 --items 1024=30
    python benchmarks/suite.py mine --model my.pop.gguf --lengths 1024 --items 1024=20
    python benchmarks/suite.py qwen2.5-coder-1.5b --resume --lengths 1024 --items 30 --speed-lengths '' \
        --add-setting 'default-tail64:full_tail=64'   # one more setting beside the recorded ones
    python benchmarks/suite.py smollm2 --plot-only          # redraw the plot from the saved results

Writes results/suite-NAME.json (answers: every item's score and reply, per setting, task and length; the
retention rows; the settings) after each group of cells, so an interrupted run keeps what it finished and
`--resume` goes on from there (it adds only the (setting, length, task) cells the file lacks: tasks,
lengths or settings; a task whose generator now asks other items runs again for every setting); then
results/suite-NAME-speed.json (prefill medians, speedups, FLOP ideal) and results/suite-NAME.png
(retention and speedup against prompt length). Each records its commit, machine, date and command.
Offline: nothing is downloaded (pop_local.measure.suite).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _items(text: str, lengths):
    out = {}
    for part in text.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[int(k)] = int(v)
        else:
            out.update({L: int(part) for L in lengths})
    missing = [L for L in lengths if L not in out]
    if missing:
        raise SystemExit(f"--items gives no count for length(s) {missing}")
    return out


def _model(args) -> str:
    if args.model:
        return args.model
    from headline import pop_file

    path = pop_file(args.name)
    if path is None:
        from pop_local.converter.default_model import default_model_path

        path = default_model_path()
    return path


def plot(result: dict, speed: "dict | None", path: str) -> None:
    """Mean retention over the tasks the full model can do (full >= 0.3), and prefill speedup (with the
    FLOP ideal, dashed), against prompt length, one line per setting."""
    from pop_local.measure.plotting import pyplot, save_figure

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    settings = [s for s in result["settings"] if s != "full"]
    colors = dict(zip(settings, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for s in settings:
        pts = []
        for L in result["lengths"]:
            kept = [r["retention"] for r in result["retention"] if r["setting"] == s and r["length"] == L
                    and r["retention"] is not None]
            if kept:
                pts.append((L, sum(kept) / len(kept)))
        if pts:
            left.plot(*zip(*pts), "o-", color=colors[s], label=s)
    left.axhline(1.0, color="grey", lw=0.8)
    left.set_ylabel("retention (POP / full), mean over tasks")
    if speed:
        for s in settings:
            rows = [r for r in speed["rows"] if s in r["speedup"]]
            if rows:
                right.plot([r["n_tokens"] for r in rows], [r["speedup"][s] for r in rows], "o-", color=colors[s],
                           label=s)
                right.plot([r["n_tokens"] for r in rows], [r["ideal"][s] for r in rows], "--", color=colors[s],
                           alpha=0.6)
        right.axhline(1.0, color="grey", lw=0.8)
    right.set_ylabel("prefill speedup (full / POP)")
    right.set_title("dashed: the FLOP ideal", fontsize=9)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt length (tokens)")
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['model']}: answers at length (left), prefill speed (right)")
    save_figure(fig, path)


def _parser() -> argparse.ArgumentParser:
    from pop_local.measure.suite import TASKS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="smollm2, gemma3, qwen2.5-coder-1.5b, or any name with --model")
    p.add_argument("--model", help="a POP GGUF (results named after NAME) instead of a test model")
    p.add_argument("--lengths", default="1024,2048", help="prompt lengths in tokens, comma separated")
    p.add_argument("--items", default="50", help="items per task and length: N, or LENGTH=N,... ")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma separated (default: all)")
    p.add_argument("--settings", help="comma separated names from the standard settings (default: all)")
    p.add_argument("--add-setting", action="append", default=[], metavar="NAME:KEY=VALUE;...",
                   help="a setting of your own, in pop-local model_args, e.g. "
                        "'paper-tail64:skip_layers=19-27;kv_mode=own;full_tail=64' (repeatable)")
    p.add_argument("--speed-lengths", default="512,1024,2048,4096,8192",
                   help="prefill lengths for the speed rows ('' for none)")
    p.add_argument("--speed-repeats", type=int, default=2)
    p.add_argument("--resume", action="store_true",
                   help="keep what the results files have; run only the (setting, length, task) cells they "
                        "lack, and replace only the speed rows of --speed-lengths")
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    return p


def _recorded_speed(base: str) -> "dict | None":
    return json.load(open(base + "-speed.json")) if os.path.exists(base + "-speed.json") else None


def _speed(a, model: str, settings, base: str, command: str) -> "dict | None":
    """The speed rows of --speed-lengths (with --resume: beside the recorded rows of other lengths), saved."""
    from pop_local.format.atomic import write_json
    from pop_local.integrations.lm_eval_suite import suite_speed
    from pop_local.measure.provenance import provenance

    lengths = [int(x) for x in a.speed_lengths.split(",") if x]
    if not lengths:
        return _recorded_speed(base)
    speed = suite_speed(model, settings, lengths, repeats=a.speed_repeats, progress=print)
    run = provenance(command)
    for row in speed["rows"]:
        row["run"], row["repeats"] = run, speed["repeats"]
    if a.resume and os.path.exists(base + "-speed.json"):  # each row is a ratio within one process
        kept = [r for r in json.load(open(base + "-speed.json"))["rows"] if r["n_tokens"] not in lengths]
        speed["rows"] = sorted(kept + speed["rows"], key=lambda r: r["n_tokens"])
    write_json(base + "-speed.json", {"model": os.path.basename(model), **speed, **run})
    print(f"saved {base}-speed.json")
    return speed


def main(argv=None) -> int:
    from pop_local.errors import PopError
    from pop_local.format.atomic import write_json
    from pop_local.integrations.lm_eval_suite import missing_cells, parse_setting, run_suite
    from pop_local.measure import suite
    from pop_local.measure.provenance import provenance

    a = _parser().parse_args(argv)
    base = os.path.join(a.out, f"suite-{a.name}")
    if a.plot_only:
        speed = _recorded_speed(base)
        plot(json.load(open(base + ".json")), speed, base + ".png")
        return 0
    model = _model(a)
    lengths = [int(x) for x in a.lengths.split(",") if x]
    items = _items(a.items, lengths)
    settings = suite.standard_settings(model)
    if a.settings:
        want = a.settings.split(",")
        unknown = [w for w in want if w not in [s.name for s in settings]]
        if unknown:
            raise SystemExit(f"unknown settings {unknown}: {', '.join(s.name for s in settings)}")
        settings = [s for s in settings if s.name in want]
    tasks = a.tasks.split(",")
    result = json.load(open(base + ".json")) if a.resume and os.path.exists(base + ".json") else None
    try:
        settings += [parse_setting(text) for text in a.add_setting]
        suite.check_settings(result, settings)
        plans = {L: missing_cells(result, model, settings, tasks, L, items[L]) for L in lengths}
    except PopError as e:
        raise SystemExit(str(e)) from None
    command = " ".join(["python", "benchmarks/suite.py"] + sys.argv[1:])
    for L in lengths:
        groups, replaced = plans[L]
        if not groups:
            print(f"{L} tokens: kept from {base}.json")
            continue
        if replaced:
            print(f"{L} tokens: {sorted({t for _, t, _ in replaced})} ask other items than recorded: every "
                  "setting answers them again")
            result["cells"] = [c for c in result["cells"] if (c["setting"], c["task"], c["length"]) not in replaced]
        # the full model's group first: every group after it pairs with its answers
        for todo, group in sorted(groups.items(), key=lambda g: all(s.name != "full" for s in g[1])):
            part = run_suite(model, lengths=[L], items={L: items[L]}, tasks=list(todo), settings=group,
                             progress=print)
            for cell in part["cells"]:  # a resumed file gathers cells from several runs: each keeps its own
                cell["run"] = provenance(command)
            result = suite.merge_results(result, part)
            result["retention"] = suite.retention(result)
            write_json(base + ".json", {**result, **provenance(command)})
            print(f"saved {base}.json")
    speed = _speed(a, model, settings, base, command)
    if result is not None:
        plot(result, speed, base + ".png")
        print(f"saved {base}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
