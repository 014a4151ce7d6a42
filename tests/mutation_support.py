"""Mutations of the YAML files a user writes, for the fuzz tests: drawn from a seeded random generator, each
either changes the parsed tree (a key deleted or misspelled, a value swapped for one of another type or a
non-finite or absurd number) or the text (an alias bomb, a recursive anchor, deep nesting, a control character, a
tab, the text cut short)."""
import math
import random
from typing import Any, Callable, List, Tuple

import yaml

ODD_VALUES = [None, "", "text", True, -1, 0, 10 ** 30, 2 ** 63, -2 ** 63, 1e308, math.inf, -math.inf, math.nan,
              [], [1, 2], {}, {"k": 0.3}, 0.5, 1.5, -0.5, "1e-3", "auto", "../x", "a/b", "x" * 300]


def paths(node: Any, prefix: Tuple = ()) -> List[Tuple]:
    """Every path to a value inside ``node``."""
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += paths(value, prefix + (i,))
    return out


def parent_of(data: Any, path: Tuple) -> Any:
    """The container holding the value at ``path``."""
    for key in path[:-1]:
        data = data[key]
    return data


def mutate_tree(rng: random.Random, data: Any, values: List[Any] = ODD_VALUES) -> None:
    """Delete, replace (with one of ``values``) or misspell the key of one value of ``data``, in place."""
    path = rng.choice([p for p in paths(data) if p])
    parent, key = parent_of(data, path), path[-1]
    kind = rng.choice(["delete", "replace", "replace", "rename"])
    if kind == "delete":
        del parent[key]
    elif kind == "replace" or not isinstance(parent, dict):
        parent[key] = rng.choice(values)
    else:
        parent[str(key)[:-1] + "x"] = parent.pop(key)


def tree_mutation(rng: random.Random, text: str) -> str:
    """``text`` parsed, one value mutated (``mutate_tree``), and written back."""
    data = yaml.safe_load(text)
    mutate_tree(rng, data)
    return yaml.safe_dump(data, sort_keys=False)


def text_mutation(rng: random.Random, text: str, key: str = "zz") -> str:
    """``text`` with an alias bomb (half of the time under ``key``, a top-level key of the file), a recursive
    anchor, deep nesting, a control character or a tab added, or cut short."""
    lines = text.splitlines()
    at = rng.randrange(len(lines))
    kind = rng.choice(["control", "bomb", "recursive", "nesting", "truncate", "tab"])
    if kind == "control":
        pos = rng.randrange(len(text))
        return text[:pos] + rng.choice("\x00\x01\x07\x1b\x7f\x85\x9b\ufffe") + text[pos:]
    if kind == "bomb":
        bomb = "x: &a [q, q, q, q, q, q, q, q, q]\n" + "".join(
            f"x{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh"))
        return text + "\n" + bomb.replace("x", key if rng.random() < 0.5 else "zz", 1)
    if kind == "recursive":
        return text + "\nextensions: &r {loop: *r}\n"
    if kind == "nesting":
        depth = rng.choice([30, 70, 2000])
        return text + "\nregularizers: " + "[" * depth + "]" * depth + "\n"
    if kind == "truncate":
        return text[:rng.randrange(1, len(text))]
    lines[at] = "\t" + lines[at]
    return "\n".join(lines)


def mutant(rng: random.Random, text: str, key: str = "zz") -> str:
    """One mutant of ``text``: a tree mutation two times in three, a text mutation (``key`` as there) otherwise."""
    mutate: Callable[[random.Random, str], str] = rng.choice([tree_mutation, tree_mutation, text_mutation])
    return mutate(rng, text) if mutate is tree_mutation else text_mutation(rng, text, key)
