"""The JSON form of channel values in the state API (`/api/state/`, README "State API").

Values are read with the safe decoder (checkpoints.decode), which never
builds the objects the data names. JSON values come out as they are; the
rest in a tagged form that a script can recognise:

    {"__bytes__": n, "sha256": "hex"}                bytes and bytearray
    {"__type__": "module.Name", "value": fields}     an object LangGraph serialized (a pydantic
                                                     model, a dataclass, a datetime, a UUID...)
    {"__type__": "numpy.ndarray", "dtype", "shape", "nbytes"}
    {"__delta__": {"seed_checkpoint_id", "seed", "writes": [{"checkpoint_id", "task_id", "idx", "value"}]}}
                                                     a DeltaChannel the console does not replay
    {"__truncated__": true, "type", "size"}          over DISPLAY_DECODE_LIMIT: not read
    {"__encrypted__": type, "size"}                  encrypted, and no LANGGRAPH_AES_KEY
    {"__unsupported__": type, "size"}                pickle or an unknown serializer: not decoded
    {"__error__": message, "size"}                   corrupt data
    {"__float__": "nan"}                             NaN and infinities

LangChain messages are given as their dict form (`message.model_dump()`), with
no tag: `type` says which kind.
"""

from checkpoints.messages import as_message

_DROPPED = ("ext", "method")


def to_json(value):
    """A decoded value in the state API's form.

    >>> to_json({"__bytes__": 2, "preview": "6162", "sha256": "fb8e"})
    {'__bytes__': 2, 'sha256': 'fb8e'}
    >>> to_json([{"__type__": "langchain_core.messages.ai.AIMessage", "ext": 5,
    ...           "value": {"content": "hi", "type": "ai", "id": "m1"}, "method": "model_validate_json"}])
    [{'content': 'hi', 'type': 'ai', 'id': 'm1'}]
    >>> to_json({"at": {"__type__": "datetime.datetime", "ext": 1, "value": ["2026-01-01T00:00:00"], "method": "fromisoformat"}})
    {'at': {'__type__': 'datetime.datetime', 'value': ['2026-01-01T00:00:00']}}
    """
    if isinstance(value, list):
        return [to_json(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "__bytes__" in value and "preview" in value:
        return {k: v for k, v in value.items() if k != "preview"}
    if "__type__" in value and "ext" in value:
        message = as_message(value)
        if message is not None:
            return to_json(message.fields)
        return {k: to_json(v) for k, v in value.items() if k not in _DROPPED}
    return {k: to_json(v) for k, v in value.items()}


def is_internal(channel: str) -> bool:
    """LangGraph's own channels, which `graph.get_state().values` leaves out.

    >>> [c for c in ["messages", "__start__", "__pregel_tasks", "branch:to:a", "join:a+b:c", "n"] if not is_internal(c)]
    ['messages', 'n']
    """
    return channel.startswith("__") or channel.startswith("branch:to:") or channel.startswith("join:")
