"""What prune and the source kinds exchange: one thread's rows as read, and what goes from them.

A kind's `Maintenance` (checkpoints/sources/kind.py) reads a thread into a
`ThreadSnapshot`; `checkpoints.prune.select()` turns it into a `Selection`,
which the kind deletes in the same transaction. Both sides import this module
and neither imports the other: prune picks the kind through the registry, and
a kind never imports prune (docs/architecture.md, "Source kinds").
"""

from dataclasses import dataclass, field

# The channel of pending sends in a checkpoint saved before format v4: its
# child reads them from the parent's writes (LangGraph's TASKS constant).
TASKS = "__pregel_tasks"


class Conflict(Exception):
    """The rows changed between the read and the delete: retry the thread."""


class PruneMismatch(Exception):
    """A thread's deletes touched another number of rows than selected."""


@dataclass(slots=True)
class Row:
    """One checkpoint row, as much of it as the selection needs."""

    ns: str
    id: str
    parent: str | None = None
    root: str | None = None  # metadata.parents[''], the root checkpoint a subgraph call started from
    bytes: int = 0
    versions: dict | None = None  # channel -> version (PostgreSQL: the blob rows it names)
    legacy: bool = False  # format v < 4: reads pending sends from its parent's writes


@dataclass(slots=True)
class WriteGroup:
    """The write rows of one (namespace, checkpoint id)."""

    count: int
    bytes: int
    tasks: bool = False  # holds __pregel_tasks writes (pending sends of a v < 4 child)


@dataclass
class ThreadSnapshot:
    """One thread at the source, read inside the transaction that may prune it."""

    thread_id: str
    checkpoints: list
    writes: dict = field(default_factory=dict)  # (ns, checkpoint_id) -> WriteGroup
    blobs: dict = field(default_factory=dict)  # (ns, channel, version) -> bytes
    delta: bool = False
    latest_metadata: dict | None = None  # of the latest root checkpoint, read when tags filter


@dataclass
class Selection:
    """What goes from one thread, or why nothing may."""

    thread_id: str
    checkpoints: list  # (ns, id), sorted
    writes: list  # (ns, checkpoint id) whose write rows go
    blobs: list  # (ns, channel, version)
    parents: list  # (ns, id) of kept rows whose parent goes
    write_rows: int = 0
    bytes: int = 0
    whole: bool = False
    skip: str | None = None
