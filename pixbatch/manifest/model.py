"""The typed manifest: :class:`Manifest` and its :class:`Step` s, as the passes built it.

A Manifest is what every other module reads (the expansion, the estimate, the runner).
Its inputs stay lazy: :meth:`Manifest.iter_inputs` re-reads ``from:`` files row by row
each time it is called. ``names_checked`` says whether the output-name walk
(:mod:`.names`) has run: ``load_manifest`` runs it, ``load_manifest_shallow`` leaves it
to whoever walks the expansion next (a run, an estimate), which checks names on that walk.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import contract
from ..storage.config import UploadsConfig
from ..yamlpos import Located
from .problems import Problem, json_path
from .sources import FileSource, Input


@dataclass(frozen=True, slots=True)
class Step:
    """One step. ``params`` are the step's own parameters (not merged with defaults)."""

    id: str
    op: str
    for_each: str | tuple[str, ...]  # "inputs", a tuple of input ids, or an earlier step's id
    params: Mapping[str, Any]
    matrix: Mapping[str, tuple[Any, ...]]  # in the order written; the last key varies fastest
    references: tuple[str, ...]  # resolved URLs (input ids replaced by their URLs)
    naming: str  # the effective naming template (the step's, else the manifest's)
    index: int = 0  # position in the manifest's steps

    @property
    def upstream(self) -> str | None:
        """The id of the step whose outputs feed this one, if any."""
        return self.for_each if isinstance(self.for_each, str) and self.for_each != "inputs" else None

    @property
    def input_ids(self) -> tuple[str, ...] | None:
        return self.for_each if isinstance(self.for_each, tuple) else None

    @property
    def matrix_size(self) -> int:
        n = 1
        for values in self.matrix.values():
            n *= len(values)
        return n


@dataclass(frozen=True)
class Manifest:
    path: Path  # absolute (for a manifest given as text or data: <base_dir>/<string> or <data>, no file)
    name: str
    budget_micros: int | None
    output_dir: Path  # absolute
    state_path: Path  # absolute
    naming: str
    defaults: Mapping[str, Mapping[str, Any]]  # {"upscale": {...}, "edit": {...}}
    steps: tuple[Step, ...]
    sources: tuple[Input | FileSource, ...] = ()
    display: str = ""  # the manifest's path as given by the user (used in problems)
    located: Located | None = field(default=None, repr=False, compare=False)
    # the output names were checked (every step expanded once: load_manifest does it).
    # Not in the repr: the resume fingerprint hashes the repr, and the items are the same
    names_checked: bool = field(default=False, repr=False, compare=False)
    # where outputs go when output_dir is s3://bucket/prefix/ (output_dir is then unused), and
    # where local inputs are uploaded: neither changes an item, so neither is in the repr
    output_uri: str | None = field(default=None, repr=False)
    uploads: UploadsConfig | None = field(default=None, repr=False)
    # how many inputs validation counted on its pass over the sources (None: not counted), so a
    # count needs no second pass over a million-row file; not in the repr, like the fields above
    input_count: int | None = field(default=None, repr=False, compare=False)
    sized_count: int | None = field(default=None, repr=False, compare=False)  # of those, with a known size

    # -- inputs, streamed --------------------------------------------------------

    def iter_inputs(self) -> Iterator[Input]:
        """Every input in manifest order; ``from:`` files are read lazily, row by row."""
        for src in self.sources:
            if isinstance(src, Input):
                yield src
            else:
                yield from src.inputs()

    def has_local_inputs(self) -> bool:
        """Whether any input is a local file (a folder, an inline path, a CSV or text file naming one)."""
        return any(s.local if isinstance(s, FileSource) else s.file is not None for s in self.sources)

    def iter_local_inputs(self) -> Iterator[Input]:
        """The inputs that are local files (only the sources that hold some are read)."""
        for src in self.sources:
            if isinstance(src, Input):
                if src.file is not None:
                    yield src
            elif src.local:
                yield from (i for i in src.inputs() if i.file is not None)

    def count_inputs(self) -> int:
        return sum(1 for _ in self.iter_inputs())

    def find_inputs(self, ids: Collection[str]) -> dict[str, Input]:
        """The inputs with these ids (missing ones are absent). Reads ``from:`` files only
        when an id is not written in the manifest itself, and stops as soon as all are found."""
        wanted = set(ids)
        found: dict[str, Input] = {}
        for src in self.sources:
            if isinstance(src, Input) and src.id in wanted:
                found.setdefault(src.id, src)
        if len(found) == len(wanted) or not any(isinstance(s, FileSource) for s in self.sources):
            return found
        for inp in self.iter_inputs():
            if inp.id in wanted and inp.id not in found:
                found[inp.id] = inp
                if len(found) == len(wanted):
                    break
        return found

    def input(self, input_id: str) -> Input:
        found = self.find_inputs((input_id,))
        if input_id not in found:
            raise KeyError(f"no input with id {input_id!r} in {self.display or self.path}")
        return found[input_id]

    @property
    def input_ids(self) -> Iterator[str]:
        """Every input id, streamed."""
        return (i.id for i in self.iter_inputs())

    # -- steps -------------------------------------------------------------------

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(f"no step {step_id!r} in {self.display or self.path}")

    def step_params(self, step: Step) -> dict[str, Any]:
        """documented defaults < defaults.<op> < the step's parameters (matrix and input
        overrides come on top, per item)."""
        merged = contract.documented_defaults(step.op)
        merged.update(self.defaults.get(step.op, {}))
        merged.update(step.params)
        return merged

    def problem(self, path: tuple[Any, ...], message: str, hint: str | None = None, *, key: bool = False) -> Problem:
        """A Problem located at ``path`` in this manifest (used by the item checks)."""
        line, col = self.located.loc(path, key=key) if self.located else (1, 1)
        return Problem(self.display or str(self.path), line, col, json_path(path), message, hint)
