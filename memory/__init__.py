"""Hierarchical markdown memory with a fixed capacity.

The host uses :class:`memory.service.MemoryService`; the other modules are
its parts:

- ``store``: where each level's files live, topic names, atomic writes;
- ``frontmatter``: YAML front matter of topic files, parsed leniently and repaired;
- ``loader``: user → project → session text under per-level token budgets, ``@path`` imports;
- ``index``: FTS5 search over every level, archived topics included;
- ``editor``: the file edits of one operation, with rollback;
- ``history``: every change with its diff and exact bytes, for undo;
- ``review``: the queue for memory derived from untrusted content;
- ``distill``: the model proposes operations, the host validates them and keeps capacity;
- ``settings``, ``errors`` (base class :class:`memory.errors.MemoryErrorBase`), ``db``.
"""
