"""lm_eval glue for pop_docqa.yaml and pop_needle.yaml: the datasets (pop_local.measure.docqa and needles
items) and the per-item score."""

from __future__ import annotations

import functools

from pop_local.measure import docqa


@functools.lru_cache(maxsize=None)
def _counter(tokenizer: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    return lambda text: len(tok(text).input_ids)


def pop_docqa(**metadata):
    return _dataset("pop_docqa", docqa.make_item, int(metadata.get("docqa_seed", 0)), metadata)


def pop_needle(**metadata):
    from pop_local.measure import needles

    return _dataset("pop_needle", needles.make_single_item, int(metadata.get("needle_seed", 0)), metadata)


def _dataset(task: str, make, seed: int, metadata):
    """The test split: metadata.docqa_items items per length of metadata.max_seq_lengths, make(seed,
    length, index, count_tokens) each."""
    import datasets

    tokenizer = metadata.get("tokenizer") or metadata.get("pretrained")
    if not tokenizer:
        raise ValueError(f'{task} needs a tokenizer: --metadata \'{{"tokenizer": "<folder or hub name>"}}\'')
    count = _counter(tokenizer)
    rows = []
    for length in metadata.get("max_seq_lengths", [4096]):
        for item in (make(seed, int(length), i, count) for i in range(int(metadata.get("docqa_items", 200)))):
            rows.append({"id": item.id, "input": item.prompt, "outputs": [item.answer],
                         "distractors": list(item.distractors), "kind": item.kind, "max_length": int(length),
                         "gen_prefix": docqa.GEN_PREFIX})
    return {"test": datasets.Dataset.from_list(rows, split=datasets.Split.TEST)}


def process_results(doc, results):
    return {"score": docqa.score_reply(results[0], doc["outputs"][0], doc["distractors"])}
