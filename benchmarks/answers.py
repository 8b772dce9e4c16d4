"""What POP does to answers on each test model at its default settings, next to the paper's setting.

    python benchmarks/answers.py smollm2 gemma3

For each model, on its POP file at default settings (benchmarks/headline.py makes it):
  results/answers-NAME.json   `pop-local eval --answers` (built-in prompt set; the file's setting and the
                              paper's last third with own K/V, each against the full model) with the
                              held-out KL the converter measured for both
  results/lmeval-NAME.json    lm-evaluation-harness on the local tasks of tests/data/lm_eval (a
                              multiple-choice and a generation task, written for the project): the full
                              model, the paper's set and the file's setting, through `--model pop-local`
                              with the prompt minimum off (their contexts are short: with the default
                              minimum every setting would score as the full model)
The speed column comes from results/headline-NAME-bench.json. benchmarks/tables.py renders the
table (key answers). Every file records its commit, machine, date and command.
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from headline import pop_file  # noqa: E402

TASKS = os.path.join(ROOT, "tests", "data", "lm_eval")


def lm_eval_scores(path: str) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    import pop_local.integrations.lm_eval  # noqa: F401 - registers "pop-local"
    from pop_local.format.frontier import paper_skip_set
    from pop_local.format.layers import format_layers
    from pop_local.format.metadata import read_pop_metadata

    meta = read_pop_metadata(path)
    paper = paper_skip_set(meta.n_layer)
    settings = {"full": {"pop": False}, "paper": {"skip_layers": format_layers(paper), "kv_mode": "own"}, "pop": {}}
    out = {}
    cwd = os.getcwd()
    os.chdir(ROOT)  # the task files name their data relative to the repository
    try:
        for name, extra in settings.items():
            args = {"model": path, "n_ctx": 2048, "min_tokens": 0, **extra}
            result = lm_eval.simple_evaluate(model="pop-local", model_args=args,
                                             tasks=["pop_local_mc", "pop_local_gen"],
                                             task_manager=TaskManager(include_path=TASKS), log_samples=False)
            out[name] = {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
                         for task, metrics in result["results"].items()}
    finally:
        os.chdir(cwd)
    kv = meta.extra.get("pop.prefill.kv_method", "own")
    f = meta.frontier  # the converter's held-out KL of both settings
    paper_row = next(r for r in f.rows if r.skip == paper)
    return {"settings": out, "tasks": ["pop_local_mc", "pop_local_gen"], "min_tokens": 0,
            "skip": {"paper": format_layers(paper), "pop": meta.skip_layers_text}, "kv": {"paper": "own", "pop": kv},
            "held_out_kl": {"paper": paper_row.kl_own, "pop": f.choice.kl(kv)},
            "paper_is_default": tuple(meta.skip_layers) == paper and kv == "own"}


def main(argv=None) -> int:
    from pop_local.format.atomic import write_json
    from pop_local.measure.provenance import provenance

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="+", help="smollm2, gemma3, qwen2.5-coder-1.5b")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    a = p.parse_args(argv)
    for name in a.names:
        model = pop_file(name)
        if model is None:
            from pop_local.converter.default_model import default_model_path

            model = default_model_path()
        path = os.path.join(a.out, f"answers-{name}.json")
        subprocess.run([sys.executable, "-m", "pop_local", "eval", model, "--ctx", "", "--passkey", "", "--answers",
                        "--json", path], check=True)
        path = os.path.join(a.out, f"lmeval-{name}.json")
        write_json(path, {"model": os.path.basename(model), **lm_eval_scores(model),
                          **provenance(" ".join(["python"] + sys.argv))})
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
