"""The sidecar API's OpenAPI 3.1 document: the single source of its paths, methods and body schemas.

The server routes from :data:`OPENAPI`'s ``paths`` (each operation's ``operationId`` names its handler)
and validates request bodies against the schemas written here (:func:`validate`), so the document
served at ``/openapi.json`` cannot drift from what the server does.
"""

from __future__ import annotations

from typing import Any

from physarum.dht.records import MAX_RECORD_TTL
from physarum.sidecar.messages import MAX_DATA_BYTES, MAX_LIMIT, TOPIC_RE

#: Largest request body accepted (bytes); larger ones are answered 413 without being read.
MAX_BODY_BYTES = 65536

#: Largest ``count`` of one ping request.
MAX_PING_COUNT = 100

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _path_param(name: str, schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "path", "required": True}
    if description is not None:
        param["description"] = description
    param["schema"] = {"type": "string", "minLength": 1, **schema}
    return param


_KEY_PARAM = _path_param(
    "key",
    {"maxLength": 256},
    "a name; the DHT key is the SHA2-256 multihash of its UTF-8 bytes "
    "(as services' service_key, so a service's instances are its providers)",
)
_PEER_ID_PARAM = _path_param(
    "peer_id",
    {"maxLength": 128, "pattern": "^[1-9A-HJ-NP-Za-km-z]+$"},
    "a peer id (base58 multihash, 12D3KooW... or Qm...)",
)
_TOPIC_PARAM = _path_param(
    "topic",
    {"maxLength": 128, "pattern": f"^{TOPIC_RE.pattern}$"},
    "a topic name: 1-128 letters, digits and ._:- starting with a letter or digit",
)
_MESSAGE = {
    "type": "object",
    "required": ["publisher", "seq", "ts", "id"],
    "description": "data (a JSON message) or data_base64 (a bytes message)",
    "properties": {
        "publisher": {"type": "string"},
        "seq": {"type": "integer"},
        "ts": {"type": "integer", "description": "the publisher's clock, unix milliseconds"},
        "id": {"type": "string", "description": "hex SHA-256 of the signed payload"},
        "data": {},
        "data_base64": {"type": "string"},
    },
}
_MESSAGE_STORED = {
    "type": "object",
    "required": ["topic", "message", "stored"],
    "properties": {
        "topic": {"type": "string"},
        "message": _MESSAGE,
        "stored": {"type": "integer", "description": "stores that acknowledged it"},
    },
}
_BAD = _error("bad input: malformed JSON, wrong types, unknown fields, a bad peer id or multiaddr")
_UNAUTHORIZED = _error("a token is configured and the request does not carry it")
_NET = _error("the network cannot be reached (not joined, or the peer cannot be dialed)")
_TIMEOUT = _error("no answer within the sidecar's deadline")
_STRINGS = {"type": "array", "items": {"type": "string"}}
_PEER = {
    "type": "object",
    "required": ["peer_id", "addrs"],
    "properties": {"peer_id": {"type": "string"}, "addrs": _STRINGS},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "physarum sidecar",
        "version": "1",
        "description": (
            "A local HTTP/JSON API to a physarum node: join the overlay, list and ping peers, find a "
            "peer's addresses, publish and find signed contact records, provide and find providers, "
            "persist messages to a topic and query them back. "
            f"Request bodies are JSON objects of at most {MAX_BODY_BYTES} bytes; unknown fields are "
            "refused. With a token, every /v1 request needs Authorization: Bearer TOKEN."
        ),
    },
    "paths": {
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "this document",
                "security": [],
                "responses": {
                    "200": {"description": "the OpenAPI document", "content": {"application/json": {}}}
                },
            }
        },
        "/v1/info": {
            "get": {
                "operationId": "info",
                "summary": "this node: peer id, listen addresses, joined or not, connected peers",
                "responses": {
                    "200": _ok(
                        "the node",
                        {
                            "type": "object",
                            "required": ["peer_id", "addrs", "joined", "connected_peers"],
                            "properties": {
                                "peer_id": {"type": "string"},
                                "addrs": _STRINGS,
                                "joined": {
                                    "type": "boolean",
                                    "description": "the DHT's routing table holds at least one peer",
                                },
                                "connected_peers": {"type": "integer", "minimum": 0},
                            },
                        },
                    ),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/v1/join": {
            "post": {
                "operationId": "join",
                "summary": "dial a peer (JoinNetwork): its DHT routing table is learned through it",
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["address"],
                        "additionalProperties": False,
                        "properties": {
                            "address": {
                                "type": "string",
                                "maxLength": 1024,
                                "description": "/ip4/HOST/tcp/PORT/p2p/PEER_ID",
                            }
                        },
                    }
                ),
                "responses": {
                    "200": _ok(
                        "connected",
                        {
                            "type": "object",
                            "required": ["peer_id"],
                            "properties": {"peer_id": {"type": "string"}},
                        },
                    ),
                    "400": _BAD,
                    "401": _UNAUTHORIZED,
                    "503": _NET,
                    "504": _TIMEOUT,
                },
            }
        },
        "/v1/peers": {
            "get": {
                "operationId": "peers",
                "summary": "connected peers, each pinged now within a small budget (rtt_ms null if no echo in it)",
                "responses": {
                    "200": _ok(
                        "connected peers",
                        {
                            "type": "object",
                            "required": ["peers"],
                            "properties": {
                                "peers": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["peer_id", "rtt_ms"],
                                        "properties": {
                                            "peer_id": {"type": "string"},
                                            "rtt_ms": {"type": ["number", "null"]},
                                        },
                                    },
                                }
                            },
                        },
                    ),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/v1/peers/{peer_id}/ping": {
            "post": {
                "operationId": "ping",
                "summary": "ping a peer (dialed through the DHT when not connected)",
                "parameters": [_PEER_ID_PARAM],
                "requestBody": _body(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "count": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_PING_COUNT,
                                "default": 1,
                            }
                        },
                    }
                ),
                "responses": {
                    "200": _ok(
                        "round-trip times",
                        {
                            "type": "object",
                            "required": ["peer_id", "rtts_ms"],
                            "properties": {
                                "peer_id": {"type": "string"},
                                "rtts_ms": {"type": "array", "items": {"type": "number"}},
                            },
                        },
                    ),
                    "400": _BAD,
                    "401": _UNAUTHORIZED,
                    "404": _error("the peer is not connected and the DHT does not know it"),
                    "503": _NET,
                    "504": _TIMEOUT,
                },
            }
        },
        "/v1/peers/{peer_id}/addrs": {
            "get": {
                "operationId": "find_peer",
                "summary": "a peer's addresses, found through the DHT",
                "parameters": [_PEER_ID_PARAM],
                "responses": {
                    "200": _ok("the peer", _PEER),
                    "400": _BAD,
                    "401": _UNAUTHORIZED,
                    "404": _error("no node on the way knew the peer"),
                    "503": _NET,
                    "504": _TIMEOUT,
                },
            }
        },
        "/v1/records": {
            "post": {
                "operationId": "publish_record",
                "summary": "sign a contact record for a name and store it in the DHT (as peer publish)",
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1, "maxLength": 256},
                            "data": {"type": "object", "default": {}},
                            "endpoints": {"type": "array", "items": {"type": "string"}, "maxItems": 32},
                            "ttl": {
                                "type": "number",
                                "exclusiveMinimum": 0,
                                "maximum": MAX_RECORD_TTL,
                                "description": "seconds the record lives (default 24 h)",
                            },
                        },
                    }
                ),
                "responses": {
                    "200": _ok(
                        "stored (stored: how many nodes took it, 0 included)",
                        {
                            "type": "object",
                            "required": ["name", "publisher", "stored"],
                            "properties": {
                                "name": {"type": "string"},
                                "publisher": {"type": "string"},
                                "stored": {"type": "integer", "minimum": 0},
                            },
                        },
                    ),
                    "400": _BAD,
                    "401": _UNAUTHORIZED,
                    "503": _NET,
                    "504": _TIMEOUT,
                },
            }
        },
        "/v1/records/{name}": {
            "get": {
                "operationId": "find_records",
                "summary": "the contact records of a name, one per publisher (as peer find)",
                "parameters": [_path_param("name", {"maxLength": 256})],
                "responses": {
                    "200": _ok(
                        "records (an empty list: none found)",
                        {
                            "type": "object",
                            "required": ["records"],
                            "properties": {
                                "records": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": [
                                            "name",
                                            "publisher",
                                            "endpoints",
                                            "data",
                                            "seq",
                                            "expires",
                                        ],
                                        "properties": {
                                            "name": {"type": "string"},
                                            "publisher": {"type": "string"},
                                            "endpoints": _STRINGS,
                                            "data": {"type": "object"},
                                            "seq": {"type": "integer"},
                                            "expires": {"type": "integer"},
                                        },
                                    },
                                }
                            },
                        },
                    ),
                    "400": _BAD,
                    "401": _UNAUTHORIZED,
                    "503": _NET,
                    "504": _TIMEOUT,
                },
            }
        },
        "/v1/providers/{key}": {
            "post": {
                "operationId": "provide",
                "summary": "announce this node as a provider of the key",
                "parameters": [_KEY_PARAM],
                "responses": {
                    "200": _ok(
                        "announced",
                        {
                            "type": "object",
                            "required": ["key", "stored"],
                            "properties": {
                                "key": {"type": "string"},
                                "stored": {"type": "integer", "minimum": 0},
                            },
                        },
                    ),
                    "400": _BAD,
                    "401": _UNAUTHORIZED,
                    "503": _NET,
                    "504": _TIMEOUT,
                },
            },
            "get": {
                "operationId": "find_providers",
                "summary": "the providers of the key",
                "parameters": [_KEY_PARAM],
                "responses": {
                    "200": _ok(
                        "providers (an empty list: none found)",
                        {
                            "type": "object",
                            "required": ["key", "providers"],
                            "properties": {
                                "key": {"type": "string"},
                                "providers": {"type": "array", "items": _PEER},
                            },
                        },
                    ),
                    "400": _BAD,
                    "401": _UNAUTHORIZED,
                    "503": _NET,
                    "504": _TIMEOUT,
                },
            },
        },
        "/v1/topics/{topic}/messages": {
            "parameters": [_TOPIC_PARAM],
            "post": {
                "operationId": "persist",
                "summary": "append a message to the topic: signed by this node, stored by the stores closest to "
                "the topic, answered once they acknowledged it",
                "requestBody": _body(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "description": "exactly one of data (any JSON value) and data_base64 (bytes); "
                        f"at most {MAX_DATA_BYTES} bytes of data (its compact JSON text, or the bytes)",
                        "properties": {"data": {}, "data_base64": {"type": "string"}},
                    }
                ),
                "responses": {
                    "201": _ok("the message as stored", _MESSAGE_STORED),
                    "400": _error("bad input: malformed JSON, a bad topic name, not exactly one of data and "
                                  "data_base64, bad base64"),
                    "401": _UNAUTHORIZED,
                    "413": _error("the message's data is over the limit"),
                    "503": _error("fewer stores than wanted acknowledged the message (it may still appear)"),
                    "504": _TIMEOUT,
                },
            },
            "get": {
                "operationId": "query",
                "summary": "the topic's messages with ts >= since, oldest first (publish order for each "
                "publisher), at most limit",
                "parameters": [
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "description": "unix milliseconds; messages published at or after it (default 0)",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**62},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "most messages returned (default 100)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                    },
                ],
                "responses": {
                    "200": _ok(
                        "messages; more is true when further ones exist past limit",
                        {
                            "type": "object",
                            "required": ["topic", "messages", "more"],
                            "properties": {
                                "topic": {"type": "string"},
                                "messages": {"type": "array", "items": _MESSAGE},
                                "more": {"type": "boolean"},
                            },
                        },
                    ),
                    "400": _BAD,
                    "401": _UNAUTHORIZED,
                    "503": _error("no store answered"),
                    "504": _TIMEOUT,
                },
            },
        },
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            }
        },
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}, {}],
}


def operations() -> dict[tuple[str, str], str]:
    """``(METHOD, path template) -> operationId`` for every operation in :data:`OPENAPI`."""
    out: dict[tuple[str, str], str] = {}
    for path, item in OPENAPI["paths"].items():
        for method, op in item.items():
            if method != "parameters":
                out[(method.upper(), path)] = op["operationId"]
    return out


def request_schema(path: str, method: str) -> dict[str, Any] | None:
    """The JSON schema of the body of ``method path``; None if it takes no body."""
    op = OPENAPI["paths"][path][method.lower()]
    body = op.get("requestBody")
    if body is None:
        return None
    schema: dict[str, Any] = body["content"]["application/json"]["schema"]
    return schema


def query_parameters(path: str, method: str) -> list[dict[str, Any]]:
    """The ``in: query`` parameters of ``method path``."""
    op = OPENAPI["paths"][path][method.lower()]
    return [p for p in op.get("parameters", []) if p["in"] == "query"]


class SchemaError(ValueError):
    """A value does not match its schema; ``where`` is the JSON path of the offending part."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
    "number": (int, float),
    "integer": (int,),
}


def validate(value: Any, schema: dict[str, Any], where: str = "body") -> None:
    """Check ``value`` against the subset of JSON Schema this document uses (type, required,
    properties, additionalProperties false, items, min/max, lengths).

    Raises:
        SchemaError: the first mismatch found.
    """
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        ok = any(
            isinstance(value, _TYPES[t]) and not (t in ("number", "integer") and isinstance(value, bool))
            for t in names
        )
        if not ok:
            raise SchemaError(where, f"must be {' or '.join(names)}")
    if isinstance(value, dict):
        props: dict[str, Any] = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                raise SchemaError(where, f"missing field {name!r}")
        if schema.get("additionalProperties") is False:
            for name in value:
                if name not in props:
                    raise SchemaError(where, f"unknown field {name!r}")
        for name, sub in props.items():
            if name in value:
                validate(value[name], sub, f"{where}.{name}")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise SchemaError(where, f"more than {schema['maxItems']} items")
        items = schema.get("items")
        if items is not None:
            for i, item in enumerate(value):
                validate(item, items, f"{where}[{i}]")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise SchemaError(where, "too short")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise SchemaError(where, f"longer than {schema['maxLength']} characters")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaError(where, f"below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise SchemaError(where, f"above {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            raise SchemaError(where, f"must be above {schema['exclusiveMinimum']}")


__all__ = [
    "MAX_BODY_BYTES",
    "MAX_PING_COUNT",
    "OPENAPI",
    "SchemaError",
    "operations",
    "query_parameters",
    "request_schema",
    "validate",
]
