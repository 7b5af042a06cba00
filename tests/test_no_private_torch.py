"""normkit uses no private torch internals and no raw memory addresses: a torch upgrade or a
stale address must not be able to break or crash a user's training run."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "normkit"

#: Private autograd/hook internals and raw addresses; each name a word of its own.
FORBIDDEN = (
    "_backward_hooks",
    "_register_hook_dict",
    "_execution_engine",
    "hooks_dict_ref",
    "queue_callback",
    "data_ptr",
    "_global_optimizer_pre_hooks",
    "_global_optimizer_post_hooks",
    "_forward_hooks",
    "_forward_pre_hooks",
    "_foreach_norm",
)
KNOWN: set[tuple[str, str]] = set()


def test_no_private_torch_internals_or_raw_addresses_in_normkit() -> None:
    pattern = re.compile(r"\b(" + "|".join(FORBIDDEN) + r")\b")
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for name in pattern.findall(line):
                if (rel, name) not in KNOWN:
                    hits.append(f"{rel}:{lineno}: {name}")
    assert not hits, "private torch internals / raw addresses:\n" + "\n".join(hits)


def test_the_pattern_finds_what_it_forbids() -> None:
    pattern = re.compile(r"\b(" + "|".join(FORBIDDEN) + r")\b")
    assert pattern.findall("t.data_ptr() and m._backward_hooks") == ["data_ptr", "_backward_hooks"]
    assert pattern.findall("my_data_ptrs, register_forward_hook") == []
