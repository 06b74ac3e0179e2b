"""The task graph: rules -> image tasks, independent of where the bytes live.

A rule becomes one :class:`ImageTask` per selected source image (tag or digest); each
task names every destination image it feeds. The engine then walks each task's own
graph: source manifest -> (child manifests ->) blobs -> manifests, index last.
"""

from __future__ import annotations

from dataclasses import dataclass

from .reference import Reference
from .rules import Rule, source_reference


@dataclass(frozen=True)
class ImageTask:
    seq: int                          # position in the plan: lower runs first (depth-first)
    rule: Rule
    source: Reference                 # with a tag or a digest
    destinations: tuple[Reference, ...]  # tag, or neither tag nor digest: push by digest only


def image_tasks(rule: Rule, source_tags: list[str] | None, first_seq: int,
                errors: list[tuple[Reference, str, str]] | None = None) -> list[ImageTask]:
    """Expand one rule. ``source_tags`` is the listing when the rule needs one. A tag
    whose destination cannot be named (a template giving an invalid tag) goes to
    ``errors`` as (source, destination repository, reason) instead."""
    sel = rule.selector
    if sel.digest:
        dests = tuple(Reference(t.registry, t.repository, t.tags[0] if t.tags else None)
                      for t in rule.targets)
        return [ImageTask(first_seq, rule, source_reference(rule, None), dests)]
    tags = list(sel.tags) if sel.tags else sel.select(source_tags or [])
    tasks = []
    for i, tag in enumerate(tags):
        try:
            dests = tuple(Reference(t.registry, t.repository, rule.destination_tag(t, tag, i))
                          for t in rule.targets)
        except ValueError as e:
            if errors is None:
                raise
            errors.extend((source_reference(rule, tag), t.name, str(e)) for t in rule.targets)
            continue
        tasks.append(ImageTask(first_seq + i, rule, source_reference(rule, tag), dests))
    return tasks
