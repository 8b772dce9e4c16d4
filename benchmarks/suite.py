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


def _custom(text: str):
    """--add-setting NAME:KEY=VALUE;KEY=VALUE (pop-local model_args) -> a Setting, checked like lm_eval's."""
    from pop_local.errors import PopError
    from pop_local.integrations.lm_eval import split_model_args
    from pop_local.measure.suite import Setting

    name, _, spec = text.partition(":")
    args = {}
    for part in filter(None, spec.split(";")):
        key, eq, value = part.partition("=")
        if not eq:
            raise SystemExit(f"--add-setting {text!r}: expected NAME:KEY=VALUE;KEY=VALUE")
        args[key.strip()] = {"true": True, "false": False}.get(value.strip().lower(), value.strip())
    if not name or not args:
        raise SystemExit(f"--add-setting {text!r}: expected NAME:KEY=VALUE;KEY=VALUE")
    for key, value in args.items():  # numbers as lm_eval would pass them (a skip set stays text)
        if isinstance(value, str) and key != "skip_layers" and value.lstrip("-").isdigit():
            args[key] = int(value)
    try:
        split_model_args(args)  # a bad key or value stops here, naming it
    except PopError as e:
        raise SystemExit(f"--add-setting {text!r}: {e}") from None
    return Setting(name, args, "; ".join(f"{k}={v}" for k, v in args.items()))


def _check_settings(result: "dict | None", settings) -> None:
    """Before anything runs: names unique, and a recorded name not reused for other arguments."""
    names = [s.name for s in settings]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SystemExit(f"settings named twice: {twice} (an --add-setting takes a name of its own)")
    for s in settings:
        recorded = (result or {}).get("settings", {}).get(s.name)
        if recorded is not None and recorded["args"] != s.args:
            raise SystemExit(f"setting {s.name!r} was recorded with {recorded['args']}, now {s.args}: "
                             "give the new one another name")


def _merge(result: "dict | None", part: dict) -> dict:
    """`part` (a run_suite result) added to `result`, its cells replacing any recorded under the same keys."""
    if result is None:
        return part
    for name, info in part["settings"].items():
        result["settings"].setdefault(name, info)
    new = {(c["setting"], c["task"], c["length"]) for c in part["cells"]}
    result["cells"] = [c for c in result["cells"] if (c["setting"], c["task"], c["length"]) not in new]
    result["cells"] += part["cells"]
    result["lengths"] = sorted(set(result["lengths"]) | set(part["lengths"]))
    result["tasks"] = list(dict.fromkeys(result["tasks"] + part["tasks"]))
    result["items"].update(part["items"])
    result["gen_cap"].update(part["gen_cap"])
    return result


def _missing(result: "dict | None", model: str, settings, tasks, L: int, n: int):
    """The cells a run at length L must add, {tasks: [settings]}, and the recorded cells they replace: a
    task whose recorded items are not the ones the generators ask now (recorded before they were seeded
    per task, or by another version) runs again for every setting recorded there. Stops, before anything
    runs, when that or the pairing with the full model cannot be done."""
    from pop_local.integrations.lm_eval_suite import item_hashes

    cells = {(c["setting"], c["task"]): c for c in (result or {}).get("cells", []) if c["length"] == L}
    names = [s.name for s in settings]
    recorded = sorted({t for (_, t) in cells} & set(tasks))
    for (name, t), c in cells.items():
        if t in recorded and c["n"] != n:
            raise SystemExit(f"{L} tokens: {t} holds {c['n']} items per setting ({name}); ask --items {L}={c['n']}")
    fresh = item_hashes(model, recorded, L, n) if recorded else {}
    stale = {t for (_, t), c in cells.items() if t in fresh and [r["hash"] for r in c["items"]] != fresh[t]}
    if stale:
        print(f"{L} tokens: {sorted(stale)} ask other items than the results hold: every setting answers again")
        absent = sorted({name for (name, t) in cells if t in stale} - set(names))
        if absent:
            raise SystemExit(f"{L} tokens: the settings {absent} answered the old items of {sorted(stale)}: "
                             "include them to run them again")
    groups: dict = {}
    for s in settings:
        todo = tuple(t for t in tasks if t in stale or (s.name, t) not in cells)
        if todo:
            groups.setdefault(todo, []).append(s)
    unpaired = sorted({t for todo in groups for t in todo if "full" not in names
                       and (("full", t) not in cells or t in stale)})
    if unpaired:
        raise SystemExit(f"{L} tokens: no full-model answers to pair with for {unpaired}: add the full setting")
    replaced = {(name, t, L) for (name, t) in cells if t in stale}
    return groups, replaced


def main(argv=None) -> int:
    from pop_local.format.atomic import write_json
    from pop_local.integrations.lm_eval_suite import run_suite, suite_speed
    from pop_local.measure import suite
    from pop_local.measure.provenance import provenance

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="smollm2, gemma3, qwen2.5-coder-1.5b, or any name with --model")
    p.add_argument("--model", help="a POP GGUF (results named after NAME) instead of a test model")
    p.add_argument("--lengths", default="1024,2048", help="prompt lengths in tokens, comma separated")
    p.add_argument("--items", default="50", help="items per task and length: N, or LENGTH=N,... ")
    p.add_argument("--tasks", default=",".join(suite.TASKS), help="comma separated (default: all)")
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
    a = p.parse_args(argv)
    base = os.path.join(a.out, f"suite-{a.name}")
    if a.plot_only:
        speed = json.load(open(base + "-speed.json")) if os.path.exists(base + "-speed.json") else None
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
    settings += [_custom(text) for text in a.add_setting]
    tasks = a.tasks.split(",")
    result = None
    if a.resume and os.path.exists(base + ".json"):
        result = json.load(open(base + ".json"))
    _check_settings(result, settings)
    command = " ".join(["python", "benchmarks/suite.py"] + sys.argv[1:])
    for L in lengths:
        groups, replaced = _missing(result, model, settings, tasks, L, items[L])
        if not groups:
            print(f"{L} tokens: kept from {base}.json")
            continue
        if replaced:
            result["cells"] = [c for c in result["cells"] if (c["setting"], c["task"], c["length"]) not in replaced]
        # the full model's group first: every group after it pairs with its answers
        for todo, group in sorted(groups.items(), key=lambda g: all(s.name != "full" for s in g[1])):
            part = run_suite(model, lengths=[L], items={L: items[L]}, tasks=list(todo), settings=group,
                             progress=print)
            for cell in part["cells"]:  # a resumed file gathers cells from several runs: each keeps its own
                cell["run"] = provenance(command)
            result = _merge(result, part)
            result["retention"] = suite.retention(result)
            write_json(base + ".json", {**result, **provenance(command)})
            print(f"saved {base}.json")
    speed = None
    speed_lengths = [int(x) for x in a.speed_lengths.split(",") if x]
    if speed_lengths:
        speed = suite_speed(model, settings, speed_lengths, repeats=a.speed_repeats, progress=print)
        run = provenance(command)
        for row in speed["rows"]:
            row["run"], row["repeats"] = run, speed["repeats"]
        if a.resume and os.path.exists(base + "-speed.json"):  # each row is a ratio within one process
            kept = [r for r in json.load(open(base + "-speed.json"))["rows"] if r["n_tokens"] not in speed_lengths]
            speed["rows"] = sorted(kept + speed["rows"], key=lambda r: r["n_tokens"])
        write_json(base + "-speed.json", {"model": os.path.basename(model), **speed, **run})
        print(f"saved {base}-speed.json")
    elif os.path.exists(base + "-speed.json"):
        speed = json.load(open(base + "-speed.json"))
    if result is not None:
        plot(result, speed, base + ".png")
        print(f"saved {base}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
