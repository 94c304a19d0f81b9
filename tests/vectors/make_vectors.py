"""Write the protocol's test vectors: frames.json, exchanges.json and faults.json in this folder.

Run once, when the protocol changes: ``python tests/vectors/make_vectors.py``
(``--check`` compares instead of writing; ``make test`` runs that). The JSON
files are the truth that the tests and ``sockapp conformance`` read; this
script only writes them, and it builds every byte by hand with ``json`` and
``struct``, as the tutorial's programs do, never with sockapp's codec, so a
change to the codec cannot change a vector. Changing a vector is changing
the protocol: PROTOCOL.md changes with it.

Answers are the ones PROTOCOL.md specifies for the search app (the
tutorial's ``libserver.py`` where it answers), written by a little-endian
sender: ``"byteorder": "little"``.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BYTEORDER = "little"  # the sender of every vector: the header field is informational

TUTORIAL_ANSWERS = {
    "morpheus": "Follow the white rabbit. \U0001f430",
    "ring": "In the caves beneath the Misty Mountains. \U0001f48d",
    "\U0001f436": "\U0001f43e Playing ball! \U0001f3d0",
}


def frame(header: Any, content: bytes = b"", *, header_bytes: bytes | None = None) -> bytes:
    """A 2-byte big-endian header length, the header, the content."""
    if header_bytes is None:
        header_bytes = json.dumps(header, ensure_ascii=False).encode("utf-8")
    return struct.pack(">H", len(header_bytes)) + header_bytes + content


def tutorial_header(content_type: str, content_encoding: str, length: int) -> dict[str, Any]:
    """The header the tutorial writes: its four fields in its order."""
    return {
        "byteorder": BYTEORDER,
        "content-type": content_type,
        "content-encoding": content_encoding,
        "content-length": length,
    }


def json_frame(document: Any, encoding: str = "utf-8") -> bytes:
    content = json.dumps(document, ensure_ascii=False).encode(encoding, "backslashreplace")
    return frame(tutorial_header("text/json", encoding, len(content)), content)


def binary_frame(content: bytes, content_type: str = "binary/custom-client-binary-type") -> bytes:
    return frame(tutorial_header(content_type, "binary", len(content)), content)


def answer_json(result: str) -> bytes:
    """The search app's answer: ``{"result": ...}`` in UTF-8; a lone surrogate as its JSON escape."""
    return json_frame({"result": result})


def answer_binary(content: bytes) -> bytes:
    return frame(
        tutorial_header("binary/custom-server-binary-type", "binary", 27 + len(content[:10])),
        b"First 10 bytes of request: " + content[:10],
    )


def search_answer(request: dict[str, Any]) -> bytes:
    """What the tutorial's server answers to a JSON request that is an object."""
    action = request.get("action")
    if action == "search":
        query = request.get("value")
        return answer_json(TUTORIAL_ANSWERS.get(query) or f"No match for '{query}'.")  # type: ignore[arg-type]
    return answer_json(f"Error: invalid action '{action}'.")


def hexed(data: bytes) -> str:
    return data.hex()


# -- frames: bytes <-> header and content --------------------------------------------------


def frame_vector(name: str, description: str, data: bytes, *, canonical: bool, split: bool = True) -> dict[str, Any]:
    length = struct.unpack(">H", data[:2])[0]
    header = json.loads(data[2 : 2 + length].decode("utf-8"))
    content = data[2 + length :]
    assert len(content) == header["content-length"], name
    vector: dict[str, Any] = {
        "name": name,
        "description": description,
        "frame": hexed(data),
        "header_length": length,
        "header": header,
        "content": hexed(content),
        "canonical": canonical,
        "split": split,
    }
    if header["content-type"] == "text/json":
        vector["document"] = json.loads(content.decode(header["content-encoding"]))
    return vector


def padded_header(total: int) -> bytes:
    """A tutorial header with an extra field padded so that the header is ``total`` bytes."""
    base = tutorial_header("binary/custom-client-binary-type", "binary", 3)
    base["padding"] = ""
    size = len(json.dumps(base).encode())
    base["padding"] = "x" * (total - size)
    encoded = json.dumps(base).encode()
    assert len(encoded) == total
    return encoded


def frames() -> list[dict[str, Any]]:
    search = json_frame({"action": "search", "value": "morpheus"})
    vectors = [
        frame_vector("search-request", "the tutorial client's search request", search, canonical=True),
        frame_vector(
            "search-answer",
            "the answer to it, non-ASCII kept",
            answer_json(TUTORIAL_ANSWERS["morpheus"]),
            canonical=True,
        ),
        frame_vector(
            "binary-request", "the tutorial client's binary request", binary_frame(b"binaryhello"), canonical=True
        ),
        frame_vector("binary-answer", "the answer to it", answer_binary(b"binaryhello"), canonical=True),
        frame_vector(
            "empty-content", "content-length 0: a frame may carry no content", binary_frame(b""), canonical=True
        ),
        frame_vector(
            "json-utf-16",
            "text/json content in UTF-16 (with its BOM); the header is UTF-8 always",
            json_frame({"action": "search", "value": "ring"}, "utf-16"),
            canonical=True,
        ),
        frame_vector(
            "json-latin-1",
            "text/json content in Latin-1",
            json_frame({"action": "search", "value": "caf\u00e9"}, "latin-1"),
            canonical=True,
        ),
        frame_vector(
            "error-answer",
            "an error answer: the same frame whether in-band or before a close",
            json_frame({"error": {"code": "content-not-json", "message": "content is not JSON"}}),
            canonical=True,
        ),
        frame_vector(
            "header-extra-fields",
            "fields beyond the four are ignored",
            frame({**tutorial_header("text/json", "utf-8", 2), "x-trace": "abc", "priority": [1, {"a": None}]}, b"{}"),
            canonical=False,
        ),
        frame_vector(
            "header-compact-reordered",
            "any key order, any JSON whitespace",
            frame(
                None,
                b"{}",
                header_bytes=b'{"content-length":2,"content-encoding":"utf-8","content-type":"text/json","byteorder":"big"}',
            ),
            canonical=False,
        ),
        frame_vector(
            "header-whitespace",
            "whitespace around and inside the header",
            frame(
                None,
                b"{}",
                header_bytes=b' \r\n\t{ "byteorder" : "little" ,\n "content-type" : "text/json" , '
                b'"content-encoding" : "utf-8" , "content-length" : 2 }\n ',
            ),
            canonical=False,
        ),
        frame_vector(
            "header-escaped-text",
            "JSON escapes in header strings mean their characters",
            frame(
                None,
                b"abc",
                header_bytes=b'{"byteorder": "little", "content-type": "binary/\\u00e9t\\u00e9", '
                b'"content-encoding": "binary", "content-length": 3}',
            ),
            canonical=False,
        ),
        frame_vector(
            "header-non-ascii",
            "non-ASCII header text in UTF-8",
            frame(tutorial_header("binary/\u00e9t\u00e9", "binary", 3), b"abc"),
            canonical=True,
        ),
    ]
    return vectors


def streams() -> list[dict[str, Any]]:
    """Several frames back to back in one byte stream: each is decoded in turn."""
    parts = [
        json_frame({"action": "search", "value": "morpheus"}),
        binary_frame(b""),
        binary_frame(b"binaryhello"),
        json_frame({"action": "search", "value": "ring"}, "utf-16"),
    ]
    return [
        {
            "name": "four-frames",
            "description": "a search, an empty binary frame, a binary frame and a UTF-16 search, back to back",
            "stream": hexed(b"".join(parts)),
            "frames": [hexed(part) for part in parts],
        }
    ]


# -- exchanges: a request to the search app and its answer ---------------------------------


def exchange(name: str, request: bytes, answer: bytes, tutorial: str = "same", note: str = "") -> dict[str, Any]:
    vector = {"name": name, "request": hexed(request), "answer": hexed(answer), "tutorial": tutorial}
    if note:
        vector["note"] = note
    return vector


def search(value: Any, encoding: str = "utf-8") -> tuple[bytes, bytes]:
    request = {"action": "search", "value": value}
    return json_frame(request, encoding), search_answer(request)


def exchanges() -> list[dict[str, Any]]:
    out = []
    for name, value in (
        ("search-morpheus", "morpheus"),
        ("search-ring", "ring"),
        ("search-dog", "\U0001f436"),
        ("search-miss", "nobody"),
        ("search-miss-non-ascii", "caf\u00e9 \u2615"),
        ("search-empty-string", ""),
        ("search-quote", "it's"),
        ("search-number", 5),
        ("search-float", 1.5),
        ("search-true", True),
        ("search-null", None),
    ):
        out.append(exchange(name, *search(value)))
    out.append(exchange("search-utf-16", *search("ring", "utf-16")))
    out.append(exchange("search-latin-1", *search("caf\u00e9", "latin-1")))
    out.append(exchange("search-utf-8-sig", *search("morpheus", "utf-8-sig")))
    for name, request in (
        ("search-no-value", {"action": "search"}),
        ("action-unknown", {"action": "find", "value": "morpheus"}),
        ("action-unknown-non-ascii", {"action": "\u00e9", "value": "x"}),
        ("action-missing", {"value": "morpheus"}),
        ("action-number", {"action": 7, "value": "x"}),
        ("action-array", {"action": [1, "two", None], "value": "x"}),
    ):
        out.append(exchange(name, json_frame(request), search_answer(request)))
    for name, content, content_type in (
        ("binary-hello", b"binaryhello", "binary/custom-client-binary-type"),
        ("binary-short", b"abc", "binary/custom-client-binary-type"),
        ("binary-non-ascii", "\U0001f436\u00e9".encode(), "binary/custom-client-binary-type"),
        ("binary-all-bytes", bytes(range(256)), "binary/custom-client-binary-type"),
        ("binary-octet-stream", b"\x00\x01\x02\x03", "application/octet-stream"),
    ):
        out.append(exchange(name, binary_frame(content, content_type), answer_binary(content)))
    search_body = json.dumps({"action": "search", "value": "morpheus"}).encode()
    morpheus = search_answer({"action": "search", "value": "morpheus"})
    for name, header_bytes in (
        (
            "header-extra-fields",
            json.dumps({**tutorial_header("text/json", "utf-8", len(search_body)), "x-trace": "abc"}).encode(),
        ),
        (
            "header-compact-reordered",
            b'{"content-length":%d,"content-encoding":"utf-8","content-type":"text/json","byteorder":"big"}'
            % len(search_body),
        ),
        ("header-encoding-upper-case", json.dumps(tutorial_header("text/json", "UTF-8", len(search_body))).encode()),
    ):
        out.append(exchange(name, frame(None, search_body, header_bytes=header_bytes), morpheus))
    out.append(
        exchange(
            "header-65535-bytes",
            frame(None, b"binaryhello"[:3], header_bytes=padded_header(0xFFFF)),
            answer_binary(b"bin"),
        )
    )
    out.append(
        exchange(
            "search-lone-surrogate",
            search("\ud800")[0],
            answer_json("No match for '\ud800'."),
            tutorial="no-answer",
            note="the answer carries the JSON escape \\ud800; the tutorial's server fails to encode it and closes",
        )
    )
    out.append(
        exchange(
            "binary-empty",
            binary_frame(b""),
            answer_binary(b""),
            tutorial="no-answer",
            note="an empty request is answered; the tutorial's server tests the request for truth and never answers",
        )
    )
    out.append(
        exchange(
            "json-empty-object",
            json_frame({}),
            answer_json("Error: invalid action 'None'."),
            tutorial="no-answer",
            note="as binary-empty: the empty object is a request like any other",
        )
    )
    return out


# -- faults: what a receiver does with a frame it cannot serve ----------------------------


def fault(name: str, data: bytes, code: str, closes: bool, required: bool = True, note: str = "") -> dict[str, Any]:
    vector = {"name": name, "frame": hexed(data), "code": code, "closes": closes, "required": required}
    if note:
        vector["note"] = note
    return vector


def faults() -> list[dict[str, Any]]:
    # Each frame carries a real search request after its header, so that a receiver that does not
    # see the fault answers the search (and says so), rather than waiting for more.
    body = json.dumps({"action": "search", "value": "morpheus"}).encode()
    length = len(body)

    def header(**changes: Any) -> dict[str, Any]:
        fields = tutorial_header("text/json", "utf-8", length)
        for key, value in changes.items():
            fields[key.replace("_", "-")] = value
        return fields

    def without(key: str) -> dict[str, Any]:
        return {k: v for k, v in header().items() if k != key}

    out = [
        fault("empty-header", b"\x00\x00" + body, "empty-header", True),
        fault("header-not-utf8", frame(None, body, header_bytes=b'{"byteorder": "\xc3\x28"}'), "header-not-utf8", True),
        fault("header-not-json", frame(None, body, header_bytes=b"byteorder=little"), "header-not-json", True),
        fault(
            "header-utf8-bom",
            frame(None, body, header_bytes=b"\xef\xbb\xbf" + json.dumps(header()).encode()),
            "header-not-json",
            True,
            note="the header is JSON text without a byte order mark",
        ),
        fault("header-array", frame(["byteorder", "little"], body), "header-not-object", True),
        fault(
            "header-string", frame(None, body, header_bytes=b'"byteorder content-length"'), "header-not-object", True
        ),
        *(fault(f"header-without-{key}", frame(without(key), body), "header-missing-key", True) for key in header()),
        fault("content-length-negative", frame(header(content_length=-1), body), "bad-content-length", True),
        fault("content-length-float", frame(header(content_length=length + 0.5), body), "bad-content-length", True),
        fault(
            "content-length-whole-float", frame(header(content_length=float(length)), body), "bad-content-length", True
        ),
        fault(
            "content-length-exponent",
            frame(
                None, body, header_bytes=json.dumps(header()).encode().replace(b": %d}" % length, b": %de0}" % length)
            ),
            "bad-content-length",
            True,
        ),
        fault("content-length-string", frame(header(content_length=str(length)), body), "bad-content-length", True),
        fault("content-length-true", frame(header(content_length=True), body), "bad-content-length", True),
        fault("content-length-null", frame(header(content_length=None), body), "bad-content-length", True),
        fault("byteorder-number", frame(header(byteorder=5), body), "bad-header-field", True),
        fault("content-type-number", frame(header(content_type=5), body), "bad-header-field", True),
        fault("content-encoding-null", frame(header(content_encoding=None), body), "bad-header-field", True),
        # Limits: a receiver may have them (sockapp does), and says so with these codes.
        fault(
            "content-too-large",
            frame(header(content_length=2**53 - 1)),
            "content-too-large",
            True,
            required=False,
            note="only the header is sent: a receiver with a limit refuses at once, without waiting for content",
        ),
        fault(
            "header-too-complex",
            frame({**header(), "x": json.loads("[" * 17 + "]" * 17)}, body),
            "header-too-complex",
            True,
            required=False,
            note="18 '[' and '{' in a header; sockapp allows 16",
        ),
        # Faults inside a sound frame: answered in-band, and the connection serves on.
        fault(
            "content-not-decodable",
            frame(header(content_length=4), b'"\xff\xfe"'),
            "content-not-decodable",
            False,
        ),
        fault("unknown-encoding", frame(header(content_encoding="ebcdic-9000"), body), "unknown-encoding", False),
        fault("content-not-json", frame(header(content_length=5), b"hello"), "content-not-json", False),
        fault("request-not-object", json_frame(["search", "ring"]), "request-not-object", False),
        fault("search-value-array", json_frame({"action": "search", "value": ["ring"]}), "bad-request", False),
        fault("search-value-object", json_frame({"action": "search", "value": {"q": "ring"}}), "bad-request", False),
        fault(
            "content-too-complex",
            json_frame({"a": json.loads("[" * 40 + "]" * 40)}),
            "content-too-complex",
            False,
            required=False,
            note="41 '[' and '{' in 87 characters; sockapp allows 32, then one per 6 characters",
        ),
    ]
    return out


FILES = {
    "frames.json": lambda: {
        "about": "Frames and what they decode to. 'frame': the bytes, hex. 'header': the header object "
        "as JSON decodes it; 'content': the content, hex; 'document': text/json content decoded in its "
        "content-encoding and parsed. 'canonical': the tutorial's own layout (its four fields in its order, "
        "', ' and ': ' separators, non-ASCII unescaped), which a sender may use and sockapp's encoder writes. "
        "'split': the frame must decode the same when its bytes arrive in two pieces split at any byte "
        "boundary, or one byte at a time. 'streams': frames back to back in one stream.",
        "frames": frames(),
        "streams": streams(),
    },
    "exchanges.json": lambda: {
        "about": "Requests to the search app and the answers PROTOCOL.md specifies, hex. Each request is "
        "sent on a connection of its own. A server's answer must have the same content-type and "
        "content-encoding, and the same content: for text/json the same JSON document, for other types "
        "the same bytes. Its header's byteorder and layout, and its JSON's layout, may differ (these "
        "answers are written as the tutorial writes them, by a little-endian sender). 'tutorial': "
        "'same' if the tutorial's app_msrvr.py answers with exactly these bytes, 'no-answer' if it "
        "answers nothing (see 'note').",
        "exchanges": exchanges(),
    },
    "faults.json": lambda: {
        "about": "Frames a receiver cannot serve, hex, each sent on a connection of its own, and the error "
        "code it gets. 'closes': true for a fault in the framing (the stream cannot be trusted past it): "
        "the server may send an error frame with the code, then closes the connection, and answers "
        "nothing else; false for a fault inside a sound frame: the server answers an error frame with "
        "the code in the request's place and the connection serves on. 'required': false for a limit "
        "a server may or may not have.",
        "faults": faults(),
    },
}


def rendered(make: Any) -> str:
    return json.dumps(make(), indent=1, ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    args = parser.parse_args(argv)
    stale = []
    for name, make in FILES.items():
        text = rendered(make)
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_text("ascii") != text:
                stale.append(name)
        else:
            path.write_text(text, "ascii")
    if stale:
        print(f"make_vectors.py writes other vectors than {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
