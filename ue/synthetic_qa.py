"""A generated closed-book QA task and a decoder built from scratch for it (no download needed).

    python -m ue.synthetic_qa data runs/qa/data/synthetic_qa --seed 0
    python -m ue.synthetic_qa model runs/qa/models/decoder-s0 --data runs/qa/data/synthetic_qa --seed 0

**The task.** ``n_entities`` made-up creatures ("the zorb") each have a colour, a food, a home and a
friend (another creature). Training rows state every fact as a question and its answer
(``{"id", "question", "answers": [one answer], "kind"}``, two phrasings per attribute); val and test
ask about the same facts, so answering is recall of what training held. Every val/test row has a
``kind``, and the shares of the kinds are exact (rounded) in val and test:

- ``easy``: a fact of a *common* creature, stated ``repeats`` times per phrasing in training.
- ``rare`` (hard): a fact of a *rare* creature (``rare_share`` of the creatures), stated once in
  training, in one phrasing.
- ``two_hop`` (hard): "what is the colour of the friend of the zorb?", which needs two facts. Training
  holds two-hop questions about other creatures (so the form is known), never about the test's.
- ``ambiguous``: the food of a creature that eats ``ambiguity`` foods, each stated equally often in
  training, so no answer is more right than another. **Rule: the reference holds one of them**, drawn
  uniformly per row (as a QA annotator writes one answer), so even a perfect model is right on only
  1 / ``ambiguity`` of these rows, and its uncertainty should say so.

``hard_share`` is split evenly between ``rare`` and ``two_hop``; ``easy`` is what is left. The same
arguments always give the same files (one ``numpy`` generator seeded by ``seed``).

**The decoder.** :func:`build_decoder` trains a word-level tokenizer (``tokenizers`` ``WordLevel`` on
the generated text, with ``[UNK]`` for any other word, so real QA text tokenises without error) and
saves it as a ``PreTrainedTokenizerFast`` beside a randomly initialised Llama (``LlamaConfig``) with
``save_pretrained``, so the normal ``from_pretrained`` path loads it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ue.data import qa_prompt

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": ("red", "blue", "green", "yellow", "black", "white", "pink", "grey"),
    "food": ("apples", "fish", "bread", "rice", "honey", "nuts", "cheese", "plums"),
    "home": ("hills", "river", "forest", "desert", "valley", "lake", "cave", "island"),
}
"""Attribute -> its possible values; ``friend`` (another creature) comes on top."""
TEMPLATES: dict[str, tuple[str, str]] = {
    "colour": ("what is the colour of {x} ?", "which colour is {x} ?"),
    "food": ("what does {x} eat ?", "which food does {x} like ?"),
    "home": ("where does {x} live ?", "where is the home of {x} ?"),
    "friend": ("who is the friend of {x} ?", "which creature is friends with {x} ?"),
}
"""Two phrasings per attribute; ``{x}`` is "the zorb" or, two-hop, "the friend of the zorb"."""
KINDS = ("easy", "rare", "two_hop", "ambiguous")
SPLITS = ("train", "validation", "test")
SPECIAL_TOKENS = {"unk_token": "[UNK]", "pad_token": "[PAD]", "bos_token": "[BOS]", "eos_token": "[EOS]"}
SYLLABLES = ("zor", "bli", "kra", "mup", "fen", "dal", "vo", "tik", "gra", "nel", "sha", "pim", "ru", "wex")


@dataclass(frozen=True)
class TaskSpec:
    """The generator's knobs; see the module docstring for what each controls."""

    n_entities: int = 40
    rare_share: float = 0.25
    repeats: int = 3
    hard_share: float = 0.3
    ambiguous_share: float = 0.2
    ambiguity: int = 2
    n_val: int = 200
    n_test: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rare_share", "hard_share", "ambiguous_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.hard_share + self.ambiguous_share > 1.0:
            raise ValueError("hard_share + ambiguous_share must be <= 1 (easy items take the rest)")
        if self.n_entities < 8 or self.repeats < 1 or not 2 <= self.ambiguity <= len(ATTRIBUTES["food"]):
            raise ValueError("need n_entities >= 8, repeats >= 1 and 2 <= ambiguity <= 8")


@dataclass(frozen=True)
class World:
    """Every creature's facts: ``facts[name][attribute]`` is the tuple of right answers."""

    names: list[str]
    rare: set[str]
    facts: dict[str, dict[str, tuple[str, ...]]]


def make_world(spec: TaskSpec, rng: np.random.Generator) -> World:
    """Creatures with distinct made-up names, a rare subset, and their facts (foods of some ambiguous)."""
    names: list[str] = []
    while len(names) < spec.n_entities:
        name = "".join(rng.choice(SYLLABLES, size=int(rng.integers(2, 4))))
        if name not in names:
            names.append(name)
    rare = set(rng.choice(names, size=round(spec.rare_share * spec.n_entities), replace=False).tolist())
    facts: dict[str, dict[str, tuple[str, ...]]] = {}
    for k, name in enumerate(names):
        facts[name] = {a: (str(rng.choice(values)),) for a, values in ATTRIBUTES.items()}
        facts[name]["friend"] = (names[(k + 1 + int(rng.integers(len(names) - 1))) % len(names)],)
    return World(names=names, rare=rare, facts=facts)


def _the(name: str) -> str:
    return f"the {name}"


def _row(kind: str, question: str, answer: str) -> dict[str, Any]:
    return {"question": question, "answers": [answer], "kind": kind}


def train_rows(world: World, spec: TaskSpec, rng: np.random.Generator, two_hop_subjects: set[str],
               ambiguous: set[str]) -> list[dict[str, Any]]:
    """Every fact stated as questions (common: ``repeats`` x both phrasings; rare: once), plus two-hop
    questions about the creatures that are not ``two_hop_subjects``; shuffled."""
    rows = []
    for name in world.names:
        for attr, answers in world.facts[name].items():
            kind = "rare" if name in world.rare else "easy"
            if name in ambiguous and attr == "food":
                kind, answers = "ambiguous", _foods(name, spec)
            for answer in answers:
                if kind == "rare":
                    rows.append(_row(kind, TEMPLATES[attr][int(rng.integers(2))].format(x=_the(name)), answer))
                else:
                    rows += [_row(kind, t.format(x=_the(name)), answer) for t in TEMPLATES[attr]] * spec.repeats
        if name not in two_hop_subjects and name not in world.rare:
            rows += [_row("two_hop", question, answer) for question, answer in _two_hop(world, name)]
    return [rows[i] for i in rng.permutation(len(rows))]


def _foods(name: str, spec: TaskSpec) -> tuple[str, ...]:
    """The ``ambiguity`` foods of an ambiguous creature (a fixed function of its name and the seed)."""
    rng = np.random.default_rng([spec.seed, *name.encode()])
    return tuple(rng.choice(ATTRIBUTES["food"], size=spec.ambiguity, replace=False).tolist())


def _two_hop(world: World, name: str) -> Iterator[tuple[str, str]]:
    friend = world.facts[name]["friend"][0]
    for attr in ATTRIBUTES:
        if attr == "food":
            continue  # a friend's food may be ambiguous; two-hop items stay answerable
        for template in TEMPLATES[attr]:
            yield template.format(x=f"the friend of {_the(name)}"), world.facts[friend][attr][0]


def eval_rows(world: World, spec: TaskSpec, rng: np.random.Generator, n: int, two_hop_subjects: list[str],
              ambiguous: list[str]) -> list[dict[str, Any]]:
    """``n`` rows with the kinds in the spec's shares (rounded; easy takes the remainder), shuffled."""
    counts = {"rare": round(n * spec.hard_share / 2), "two_hop": round(n * spec.hard_share / 2),
              "ambiguous": round(n * spec.ambiguous_share)}
    counts["easy"] = n - sum(counts.values())
    common = [x for x in world.names if x not in world.rare]
    unambiguous = [x for x in common if x not in ambiguous]
    rows = []
    for kind in KINDS:
        for _ in range(counts[kind]):
            template = int(rng.integers(2))
            if kind == "ambiguous":
                name = str(rng.choice(ambiguous))
                q = TEMPLATES["food"][template].format(x=_the(name))
                rows.append(_row(kind, q, str(rng.choice(_foods(name, spec)))))
            elif kind == "two_hop":
                question, answer = _pick(list(_two_hop(world, str(rng.choice(two_hop_subjects)))), rng)
                rows.append(_row(kind, question, answer))
            else:
                name = str(rng.choice(sorted(world.rare) if kind == "rare" else unambiguous))
                attr = str(rng.choice(list(TEMPLATES)))
                rows.append(_row(kind, TEMPLATES[attr][template].format(x=_the(name)), world.facts[name][attr][0]))
    return [rows[i] for i in rng.permutation(len(rows))]


def _pick(items: list[tuple[str, str]], rng: np.random.Generator) -> tuple[str, str]:
    return items[int(rng.integers(len(items)))]


def generate(spec: TaskSpec) -> dict[str, list[dict[str, Any]]]:
    """``{"train" | "validation" | "test": rows}``, each row ``{"id", "question", "answers", "kind"}``."""
    rng = np.random.default_rng(spec.seed)
    world = make_world(spec, rng)
    common = [x for x in world.names if x not in world.rare]
    two_hop_subjects = sorted(rng.choice(common, size=max(2, len(common) // 4), replace=False).tolist())
    others = [x for x in common if x not in two_hop_subjects]
    ambiguous = sorted(rng.choice(others, size=max(2, len(others) // 3), replace=False).tolist())
    splits = {
        "train": train_rows(world, spec, rng, set(two_hop_subjects), set(ambiguous)),
        "validation": eval_rows(world, spec, rng, spec.n_val, two_hop_subjects, ambiguous),
        "test": eval_rows(world, spec, rng, spec.n_test, two_hop_subjects, ambiguous),
    }
    return {split: [{"id": f"{split}-{i}", **row} for i, row in enumerate(rows)] for split, rows in splits.items()}


def write_dataset(folder: Path, spec: TaskSpec) -> dict[str, int]:
    """Write ``train/validation/test.jsonl`` and ``SOURCE.md`` (the spec) into ``folder``; rows per split."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, rows in generate(spec).items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        counts[split] = len(rows)
    (folder / "SOURCE.md").write_text(f"Generated by `python -m ue.synthetic_qa data` with {asdict(spec)}.\n",
                                      encoding="utf-8")
    return counts


def corpus(folder: Path) -> list[str]:
    """Every prompt and answer of the dataset in ``folder``, as the model reads them."""
    texts = []
    for split in SPLITS:
        for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [qa_prompt(row["question"]), *row["answers"]]
    return texts


def build_tokenizer(texts: list[str]) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over ``texts`` (every word of them, plus the special
    tokens); ``[BOS]`` starts every encoded text, unknown words become ``[UNK]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS.values())))
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def build_decoder(folder: Path, *, data: Path, seed: int = 0, hidden_size: int = 64, layers: int = 2,
                  heads: int = 4, max_positions: int = 64) -> Path:
    """Save a random Llama and the tokenizer of the dataset in ``data`` into ``folder``
    (``from_pretrained(folder)`` loads both); the weights are seeded by ``seed``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = build_tokenizer(corpus(data))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ue.synthetic_qa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write train/validation/test.jsonl")
    data.add_argument("folder", type=Path)
    for field, default in asdict(TaskSpec()).items():
        data.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=default)
    model = sub.add_parser("model", help="save a random decoder + the dataset's tokenizer")
    model.add_argument("folder", type=Path)
    model.add_argument("--data", type=Path, required=True)
    model.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "data":
        spec = TaskSpec(**{f: getattr(args, f) for f in asdict(TaskSpec())})
        print(json.dumps(write_dataset(args.folder, spec)))
    else:
        print(build_decoder(args.folder, data=args.data, seed=args.seed))


if __name__ == "__main__":
    main()
