"""Long-document questions generated from a seed: checkable facts, distractors, any prompt length.

Each item is a staff report of an invented cooperative (people, rooms, years, towns, temperatures,
notice periods, parcel weights, badge codes, appointments), long enough to fill a prompt of the asked
length in the model's tokens, and one question about one fact. The report states the same kind of fact
for other people too, one of them in the same paragraph as the answer (the distractor a model that
half-remembers the document picks), and values carry their units. A reply is right when it contains
the answer (whole words, case ignored) and none of the distractors' values: a reply that lists every
room in the building is not an answer.

Items depend only on (seed, length, index), not on the order they are made in, so two runs of the
suite, or two settings in one run, answer the same questions. Written for the project; the names and
towns are invented.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

from .answers import answer_found

__all__ = ["DocItem", "make_item", "make_items", "make_document", "score_reply", "PROMPT_HEAD", "GEN_PREFIX"]

PROMPT_HEAD = "Read the staff report below, then answer the question after it with the exact value the report gives."
GEN_PREFIX = "Answer:"

_FIRST = ("Ruth", "Peter", "Amara", "Jonas", "Leila", "Tomas", "Ines", "Marek", "Sofia", "Kwame", "Hanna", "Diego",
          "Yara", "Emil", "Noor", "Felix", "Greta", "Omar", "Alma", "Viktor", "Lucia", "Anders", "Mei", "Rafael",
          "Ilse", "Bruno", "Zofia", "Caleb", "Nadia", "Otto", "Elena", "Sami", "Freya", "Hugo", "Marta", "Idris")
_LAST = ("Achterberg", "Lindgren", "Okafor", "Brandt", "Haddad", "Novak", "Ferreira", "Kowalczyk", "Moreau",
         "Mensah", "Virtanen", "Castillo", "Nakamura", "Holm", "Rahimi", "Weber", "Dubois", "Petrov", "Sandoval",
         "Eriksen", "Quinn", "Lorenz", "Takeda", "Barros", "Hartmann", "Ivanova", "Costa", "Fischer", "Abara",
         "Strand", "Varga", "Oyelaran", "Kessler", "Duarte", "Mattsson", "Aaltonen")
_TOWNS = ("Vientosa", "Marlow Bay", "Kesterholm", "Dunmere", "Oskaville", "Bramblecote", "Tiranova", "Halvik",
          "Pell Harbour", "Santo Revel", "Gorsefield", "Lunderby", "Castel Ombra", "Wrenfold", "Ostrava Nova",
          "Mirecourt", "Fenwick Cross", "Ardalen")
_ROLES = ("chief financial officer", "head of logistics", "safety warden", "archivist", "quality inspector",
          "head baker", "union representative", "fleet manager", "data protection officer", "orchard supervisor")
_BREADS = ("rye rolls", "spelt loaves", "seeded baguettes", "oat crackers", "walnut bread", "barley buns")
_FILLER = (
    "The minutes of the spring meeting were approved without changes.",
    "Members were reminded that the loading yard closes at dusk during the winter months.",
    "The newsletter will continue to appear on the first Monday of each month.",
    "A suggestion box has been placed next to the canteen entrance.",
    "The committee thanked the volunteers who repainted the east stairwell.",
    "Parking near the greenhouses remains reserved for delivery vans.",
    "The library corner now lends tools as well as books.",
    "Visitors must sign in at the front desk and wear a guest badge.",
    "The annual picnic will again be held by the mill pond, weather permitting.",
    "Questions about the pension scheme should be sent to the members' office.",
    "The heating in the old warehouse was serviced in the autumn.",
    "New members receive a copy of the cooperative's charter on their first day.",
    "The choir rehearses on Thursday evenings in the assembly hall.",
    "Recycling bins for glass and metal are emptied every second week.",
)


@dataclass(frozen=True)
class DocItem:
    """One generated question: `prompt` ends with the question (the suite appends GEN_PREFIX);
    `answer` is the value asked for, `distractors` the same kind of value stated for others."""
    id: str
    prompt: str
    question: str
    answer: str
    distractors: Tuple[str, ...]
    kind: str


@dataclass(frozen=True)
class _Fact:
    kind: str
    value: Callable[[random.Random], str]   # a value (what must appear in a right reply)
    sentence: str                             # {name}, {value}, {extra}
    question: str
    extra: Callable[[random.Random], str] = lambda rng: ""


_FACTS = (
    _Fact("office", lambda r: str(r.randint(101, 989)), "{name}'s office is room {value} on the {extra} floor.",
          "Which room is {name}'s office?", lambda r: r.choice(("first", "second", "third", "fourth"))),
    _Fact("joined", lambda r: str(r.randint(1961, 2019)), "{name} joined the cooperative in {value}, {extra}.",
          "In which year did {name} join the cooperative?",
          lambda r: r.choice(("after a year abroad", "straight from school", "as a seasonal picker",
                              "on a friend's advice"))),
    _Fact("hometown", lambda r: r.choice(_TOWNS), "{name} grew up in {value} and still {extra} there.",
          "In which town did {name} grow up?",
          lambda r: r.choice(("spends the summers", "keeps a small boat", "has family", "owns a cottage"))),
    _Fact("oven", lambda r: f"{r.randrange(150, 265, 5)}", "{name} bakes the {extra} at {value} °C.",
          "At what temperature in °C does {name} bake the {extra}?", lambda r: r.choice(_BREADS)),
    _Fact("notice", lambda r: str(r.choice((12, 24, 36, 48, 72, 96, 120))),
          "{name}'s contract requires {value} hours of written notice before {extra}.",
          "How many hours of written notice does {name}'s contract require?",
          lambda r: r.choice(("a shift change", "any unpaid leave", "a transfer", "resigning"))),
    _Fact("parcel", lambda r: f"{r.randint(2, 48)}.{r.randint(1, 9)}",
          "{name} shipped a parcel of {extra} weighing {value} kg.", "How many kilograms did {name}'s parcel weigh?",
          lambda r: r.choice(("seed packets", "spare valves", "printed forms", "glass jars", "dried apples"))),
    _Fact("badge", lambda r: f"{r.choice('KMRTVX')}-{r.randint(1000, 9999)}",
          "{name}'s badge code is {value}, issued at the {extra} gate.", "What is {name}'s badge code?",
          lambda r: r.choice(("north", "south", "river", "orchard"))),
)
_ROLE = "role"  # the reverse question: who holds a role (the answer is a name; the former holder distracts)


def _people(rng: random.Random, n: int) -> List[str]:
    pairs = rng.sample([(f, s) for f in _FIRST for s in _LAST], n)
    firsts, lasts, out = set(), set(), []
    for f, s in pairs:  # distinct first and last names: a reply naming half a person is unambiguous
        if f not in firsts and s not in lasts:
            firsts.add(f)
            lasts.add(s)
            out.append(f"{f} {s}")
    return out


def _paragraph(rng: random.Random, name: str, facts: Sequence[Tuple[_Fact, str, str]]) -> str:
    parts = [fact.sentence.format(name=name, value=value, extra=extra) for fact, value, extra in facts]
    if rng.random() < 0.5:
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(_FILLER))
    return " ".join(parts)


def _question_item(rng: random.Random, people: List[str]):
    """(question, answer, distractors, kind, paragraphs): the asked fact, and a list of (weight, text,
    facts) paragraphs with the answer's paragraph marked weight 0 (never dropped) and the others
    droppable; `facts` are the (person, fact, value, extra) a paragraph states about one other person."""
    target, neighbour, others = people[0], people[1], people[2:]
    if rng.random() < 1 / (len(_FACTS) + 1):  # the reverse question about a role
        role = rng.choice(_ROLES)
        answer, former = target, neighbour
        year = rng.randint(1990, 2024)
        key = (f"{former} served as {role} until {year}, when the members appointed {answer} to the post. "
               f"{answer} had worked beside {former} for several years.")
        other_roles = [r for r in _ROLES if r != role]
        para = [(0, key, ())] + [(1, f"{p} was appointed {rng.choice(other_roles)} in {rng.randint(1990, 2024)}.", ())
                                 for p in others]
        return f"Who is the cooperative's {role} now?", answer, (former,), _ROLE, para
    fact = rng.choice(_FACTS)
    values = set()

    def fresh() -> "str | None":
        for _ in range(50):  # some kinds have few values (notice periods): then fewer distractors
            v = fact.value(rng)
            if v not in values:
                values.add(v)
                return v
        return None

    extra = fact.extra(rng)
    answer, near = fresh(), fresh()
    key = " ".join(f.sentence.format(name=n, value=v, extra=extra) for f, n, v in
                   rng.sample([(fact, target, answer), (fact, neighbour, near)], 2))
    para = [(0, key, ((target, fact, answer, extra), (neighbour, fact, near, extra)))]
    distractors = [near]
    other_facts = [f for f in _FACTS if f.kind != fact.kind]
    for i, p in enumerate(others):
        chosen = [(f, f.value(rng), f.extra(rng)) for f in rng.sample(other_facts, 2)]
        v = fresh() if i % 3 == 0 else None  # the same kind of fact for others too, further away
        if v is not None:
            distractors.append(v)
            chosen.append((fact, v, fact.extra(rng)))
        rng.shuffle(chosen)
        para.append((1, _paragraph(rng, p, chosen), tuple((p, f, value, extra) for f, value, extra in chosen)))
    return fact.question.format(name=target, extra=extra), answer, tuple(distractors), fact.kind, para


def make_item(seed: int, length: int, index: int, count_tokens: Callable[[str], int], reserve: int = 96) -> DocItem:
    """The item `index` of a set whose prompts fill `length` tokens (as `count_tokens` counts them) less
    `reserve` (the reply's room); the same arguments always give the same item."""
    return make_document(seed, length, index, count_tokens, 1, reserve)[0]


def make_document(seed: int, length: int, index: int, count_tokens: Callable[[str], int], questions: int = 1,
                  reserve: int = 96) -> List[DocItem]:
    """Up to `questions` questions about one report, differing only after "Question:" (a cache holding the
    report answers the rest for a few tokens each): `make_item`'s item, then facts the report states
    about other people, each value stated once, the same kind of value for others its distractors."""
    rng = random.Random(f"pop-local-docqa-{seed}-{length}-{index}")
    people = _people(rng, 60)
    question, answer, distractors, kind, para = _question_item(rng, people)
    fixed = [p for w, p, _ in para if w == 0]
    optional = [p for w, p, _ in para if w == 1]
    budget = length - reserve

    def render(body: List[str], asked: str = question) -> str:
        return f"{PROMPT_HEAD}\n\nSTAFF REPORT\n\n" + "\n\n".join(body) + f"\n\nQuestion: {asked}"

    # fill with paragraphs (the people's first, then filler) while the summed counts fit, then drop
    # paragraphs from the end until the whole prompt, counted at once, fits
    body = list(fixed)
    spare = list(optional)
    fillers = list(_FILLER)
    used = count_tokens(render(body))
    while True:
        candidate = spare.pop(0) if spare else " ".join(rng.sample(fillers, 4))
        cost = count_tokens(candidate) + 2
        if used + cost > budget:
            break
        body.append(candidate)
        used += cost
    while count_tokens(render(body)) > budget:
        if len(body) == 1:
            raise ValueError(f"a document question does not fit {length} tokens (give a length of 256 or more)")
        body.pop()
    # the answer's paragraph at a depth drawn uniformly over the document
    key = body.pop(0)
    rest = body
    rng.shuffle(rest)
    rest.insert(rng.randint(0, len(rest)), key)
    # distractors named in paragraphs that did not fit are not in the document: keep those that are
    text = render(rest)
    document = text.split("\n\nQuestion:")[0]
    present = tuple(d for d in distractors if d in document)
    items = [DocItem(f"docqa-{length}-{index}", text, question, answer, present, kind)]
    if questions > 1:
        items += _more_questions(f"pop-local-docqa-{seed}-{length}-{index}-more", para, rest, document, question,
                                 render, budget, count_tokens, questions - 1, f"docqa-{length}-{index}")
    return items


def _more_questions(seed: str, para, body: List[str], document: str, first: str, render, budget: int,
                    count_tokens, n: int, name: str) -> List[DocItem]:
    """Up to n questions besides `first` about the facts in `body` whose value the document states once."""
    import re

    stated = {text: facts for _, text, facts in para if text in body}
    facts = [fact for text in body for fact in stated.get(text, ())]

    def once(value: str) -> bool:
        return len(re.findall(rf"(?<!\w){re.escape(value)}(?!\w)", document)) == 1

    askable = [f for f in facts if once(f[2]) and f[1].question.format(name=f[0], extra=f[3]) != first]
    random.Random(seed).shuffle(askable)
    items: List[DocItem] = []
    for person, fact, value, extra in askable:
        if len(items) == n:
            break
        asked = fact.question.format(name=person, extra=extra)
        text = render(body, asked)
        if count_tokens(text) > budget:
            continue
        others = tuple(dict.fromkeys(v for _, f, v, _ in facts if f.kind == fact.kind and v != value))
        items.append(DocItem(f"{name}-q{len(items) + 1}", text, asked, value, others, fact.kind))
    return items


def make_items(seed: int, length: int, n: int, count_tokens: Callable[[str], int], reserve: int = 96) -> List[DocItem]:
    return [make_item(seed, length, i, count_tokens, reserve) for i in range(n)]


def score_reply(reply: str, answer: str, distractors: Sequence[str]) -> float:
    """1.0 when the reply's first line contains the answer and no distractor value, else 0.0."""
    line = reply.strip().split("\n")[0]
    if not answer_found(line, answer):
        return 0.0
    return 0.0 if any(answer_found(line, d) for d in distractors) else 1.0
