"""Output names: each rendered name stays inside ``output_dir`` and is unique in its step.

- :func:`name_escapes` is the rule for one name (pure; the meaning pass also applies it
  to a naming template rendered with sample values).
- :func:`check_output_names` is validation pass 3: it expands every step once. Memory:
  one 64-bit hash per item of the step being checked; the names behind colliding hashes
  are looked at again in a second walk of that step only.
- :class:`NameCheck` is the same check riding on a walk of the expansion that happens
  anyway (a run's ingest, an estimate's pricing walk), for a manifest loaded with
  ``load_manifest_shallow``. ``NameCheck.verify()`` is the one way a walk's name problems
  become a :class:`~pixbatch.errors.ManifestError` (worded as ``load_manifest`` words it).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import ManifestError
from ..expand import expand_step
from ..items import WorkItem
from ..keyset import KeySet
from .model import Manifest, Step
from .problems import MAX_ROW_PROBLEMS, Problem, manifest_error


_pack = struct.Struct("<q").pack  # a str hash (a C ssize_t) as 8 bytes


def name_escapes(name: str) -> str | None:
    """Why a rendered output name would leave the output directory (None when it stays in)."""
    if (name and not name[0].isspace() and name[0] not in "/\\~" and name[1:2] != ":" and ".." not in name
            and "\\" not in name and "\x00" not in name and not name.endswith(("/", "/.")) and name != "."):
        return None  # the common case, without splitting (each clause rules out one reason below)
    if not name.strip():
        return "is empty"
    if name.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    parts = re.split(r"[/\\]", name)
    if any(p == ".." for p in parts):
        return "contains '..'"
    if name.endswith(("/", "\\")) or parts[-1] in ("", "."):
        return "names a directory, not a file"
    if "\x00" in name:
        return "contains a NUL character"
    return None


def check_output_names(manifest: Manifest) -> list[Problem]:
    """Expand every step once: names inside output_dir, no two items of a step with one name."""
    problems: list[Problem] = []
    for step in manifest.steps:
        npath = _naming_path(manifest, step)
        seen: set[int] = set()
        colliding: set[int] = set()
        escapes = 0
        try:
            for item in expand_step(manifest, step.id):
                name = item.output_name
                h = hash(name)
                if h in seen:
                    colliding.add(h)
                else:
                    seen.add(h)
                why = name_escapes(name)
                if why:
                    escapes += 1
                    if escapes <= MAX_ROW_PROBLEMS:
                        problems.append(manifest.problem(
                            npath, f"step {step.id!r}, item {item.index} (input {item.input_id!r}): the output name "
                                   f"{name!r} {why}; names must stay inside output_dir",
                            "build names from {step}, {stem}, {input}, {index} and matrix variables, with no '..' or leading '/'"))
        except ManifestError as exc:
            problems.extend(exc.problems)
            continue
        del seen
        if colliding:
            problems.extend(_duplicate_names(manifest, step, npath, colliding))
    return problems


class NameCheck:
    """:func:`check_output_names` riding on a walk of the expansion that happens anyway.

    ``wrap(items)`` passes the items through, remembering one hash per name of the step
    being walked; ``problems()`` is ``check_output_names``' answer, which it computes (for
    its exact messages) only when the walk saw a name that escapes or repeats. Steps come
    one after the other from ``expand``, so one step's hashes are in memory at a time.
    """

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.suspect = False

    def wrap(self, items: Iterable[WorkItem]) -> Iterator[WorkItem]:
        step: str | None = None
        see: Any = None
        for it in items:
            if it.step != step:
                step, see = it.step, self.step_filter()
            see(it.output_name)
            yield it

    def step_filter(self) -> Callable[[str], None]:
        """The check of one step's names, called with each in walk order (``wrap`` uses one per
        step; a walk without WorkItems calls it itself): a repeat or an escaping name sets ``suspect``."""
        add = KeySet(8).add  # 8 bytes of each name's hash (~14 bytes a name)

        def see(name: str) -> None:
            if not add(_pack(hash(name))) or name_escapes(name):
                self.suspect = True  # a repeat, or two names whose hashes share 64 bits: looked at exactly

        return see

    def problems(self) -> list[Problem]:
        return check_output_names(self.manifest) if self.suspect else []

    def verify(self) -> None:
        """After the walk: raise ManifestError when a name escapes output_dir or repeats in a step."""
        problems = self.problems()
        if problems:
            raise manifest_error(self.manifest.display or self.manifest.path, problems)


def _naming_path(manifest: Manifest, step: Step) -> tuple[Any, ...]:
    """Where a step's naming template is written (the step's, else the manifest's)."""
    data = manifest.located.data if manifest.located else {}
    try:
        if "naming" in data["steps"][step.index]:
            return ("steps", step.index, "naming")
    except (KeyError, IndexError, TypeError):
        pass
    return ("naming",) if isinstance(data, dict) and "naming" in data else ("steps", step.index)


def _duplicate_names(manifest: Manifest, step: Step, npath: tuple[Any, ...], colliding: set[int]) -> list[Problem]:
    first: dict[str, int] = {}
    out: list[Problem] = []
    dups = 0
    for item in expand_step(manifest, step.id):
        name = item.output_name
        if hash(name) not in colliding:
            continue
        if name not in first:
            first[name] = item.index
            continue
        dups += 1
        if dups <= MAX_ROW_PROBLEMS:
            out.append(manifest.problem(
                npath, f"step {step.id!r}: items {first[name]} and {item.index} both render the output name {name!r}",
                "make the naming template tell them apart, e.g. add {stem}, {index} or every matrix variable"))
    if dups > MAX_ROW_PROBLEMS:
        out.append(manifest.problem(npath, f"step {step.id!r}: {dups - MAX_ROW_PROBLEMS} more duplicate output names",
                                    "fix the naming template"))
    return out
