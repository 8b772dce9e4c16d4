"""lm_eval glue for pop_docqa.yaml: the dataset (pop_local.measure.docqa items) and the per-item score."""

from __future__ import annotations

import functools

from pop_local.measure import docqa


@functools.lru_cache(maxsize=None)
def _counter(tokenizer: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    return lambda text: len(tok(text).input_ids)


def pop_docqa(**metadata):
    import datasets

    tokenizer = metadata.get("tokenizer") or metadata.get("pretrained")
    if not tokenizer:
        raise ValueError('pop_docqa needs a tokenizer: --metadata \'{"tokenizer": "<folder or hub name>"}\'')
    count = _counter(tokenizer)
    rows = []
    for length in metadata.get("max_seq_lengths", [4096]):
        for item in docqa.make_items(int(metadata.get("docqa_seed", 0)), int(length),
                                     int(metadata.get("docqa_items", 200)), count):
            rows.append({"id": item.id, "input": item.prompt, "outputs": [item.answer],
                         "distractors": list(item.distractors), "kind": item.kind, "max_length": int(length),
                         "gen_prefix": docqa.GEN_PREFIX})
    return {"test": datasets.Dataset.from_list(rows, split=datasets.Split.TEST)}


def process_results(doc, results):
    return {"score": docqa.score_reply(results[0], doc["outputs"][0], doc["distractors"])}
