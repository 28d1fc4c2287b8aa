"""Reading a large JSON document piece by piece: the `_sha256file` of a 1 TiB volume is
2.4 GB of JSON and its `_metadata` 65 MB, too much to hold (and far too much to hold as Python
strings and dicts).

`ObjectReader` walks one top-level JSON object from an iterable of byte chunks. Small members
are decoded whole with `json`; a member named in `streamed` is handed to its callback, which
consumes the member's array through `elements` (one small value at a time) or `array_pieces`
(raw text between commas, for arrays of strings). Text is UTF-8, decoded as it arrives. Any
departure from JSON is a BadMetadata naming the document. Pure code: the chunks come from the
caller.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from bakfs.errors import BadMetadata

MAX_MEMBER = 64 << 20  # a member other than the streamed arrays larger than this is refused
READ_AHEAD = 1 << 16  # characters decoded at least per refill of the buffer
PIECE = 4 << 20  # arrays of strings are handed out in pieces of about this many characters
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class ObjectReader:
    """One top-level JSON object read from byte chunks; see the module docstring."""

    def __init__(self, chunks: Iterable[bytes | memoryview], what: str) -> None:
        self.what = what
        self._chunks: Iterator[bytes | memoryview] = iter(chunks)
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._text = ""
        self._pos = 0
        self._eof = False
        self._started = False

    # -- the text buffer -------------------------------------------------------------------

    def _more(self) -> bool:
        """Append the next chunks' text (at least READ_AHEAD characters of it, so small
        chunks do not make the buffer be copied for each); False at the end."""
        if self._eof:
            return False
        texts = []
        size = 0
        while size < READ_AHEAD:
            chunk = next(self._chunks, None)
            try:
                text = self._decoder.decode(b"" if chunk is None else bytes(chunk),
                                            final=chunk is None)
            except UnicodeDecodeError as exc:
                raise BadMetadata(f"{self.what} is not valid JSON: {exc}") from None
            if not self._started and text:
                self._started = True
                text = text.removeprefix("\ufeff")
            texts.append(text)
            size += len(text)
            if chunk is None:
                self._eof = True
                break
        self._text = self._text[self._pos:] + "".join(texts)
        self._pos = 0
        return True

    def _skip_ws(self) -> None:
        while True:
            match = _WS.match(self._text, self._pos)
            assert match is not None
            self._pos = match.end()
            if self._pos < len(self._text) or not self._more():
                return

    def peek(self) -> str:
        """The next character after white space ('' at the end)."""
        self._skip_ws()
        return self._text[self._pos:self._pos + 1]

    def _expect(self, char: str, context: str) -> None:
        if self.peek() != char:
            found = self._text[self._pos:self._pos + 20] or "the end"
            raise BadMetadata(f"{self.what} is not valid JSON: expected {char!r} {context}, "
                              f"found {found!r}")
        self._pos += 1

    def value(self) -> Any:
        """The next JSON value (small: at most MAX_MEMBER characters)."""
        self._skip_ws()
        while True:
            try:
                value, end = _DECODER.raw_decode(self._text, self._pos)
            except json.JSONDecodeError as exc:
                if len(self._text) - self._pos < MAX_MEMBER and self._more():
                    continue
                raise BadMetadata(f"{self.what} is not valid JSON: {exc}") from None
            except RecursionError:
                raise BadMetadata(f"{self.what} is nested too deeply to be a Cinder "
                                  "document") from None
            # a value must be followed by something (',', ']' or '}'): a number or a
            # literal cut at the end of a chunk would otherwise be read short
            if end < len(self._text) or self._eof:
                self._pos = end
                return value
            if not self._more():
                self._pos = end
                return value

    # -- the document ----------------------------------------------------------------------

    def members(self, streamed: dict[str, Callable[[ObjectReader], None]]) -> dict[str, Any]:
        """Read the whole object: the members not in `streamed` are returned decoded; each
        streamed member's callback reads its value from this reader."""
        if self.peek() != "{":
            if not self.peek():
                raise BadMetadata(f"{self.what} is not valid JSON: it is empty")
            self.value()  # says "not valid JSON" when it is not
            raise BadMetadata(f"{self.what} is not a JSON object")
        self._pos += 1
        found: dict[str, Any] = {}
        if self.peek() == "}":
            self._pos += 1
        else:
            while True:
                key = self.value()
                if not isinstance(key, str):
                    raise BadMetadata(f"{self.what} is not valid JSON: a key is not a string")
                self._expect(":", f"after {key!r}")
                if key in streamed:
                    self._skip_ws()
                    streamed[key](self)
                else:
                    found[key] = self.value()
                separator = self.peek()
                self._pos += 1
                if separator == "}":
                    break
                if separator != ",":
                    raise BadMetadata(f"{self.what} is not valid JSON: expected ',' or '}}' "
                                      f"after {key!r}")
        if self.peek():
            raise BadMetadata(f"{self.what} is not valid JSON: extra data after the object")
        return found

    def elements(self) -> Iterator[Any]:
        """The values of the array that starts here, one at a time."""
        self._expect("[", "to open an array")
        if self.peek() == "]":
            self._pos += 1
            return
        while True:
            yield self.value()
            separator = self.peek()
            self._pos += 1
            if separator == "]":
                return
            if separator != ",":
                raise BadMetadata(f"{self.what} is not valid JSON: expected ',' or ']' in an "
                                  "array")

    def array_pieces(self) -> Iterator[str]:
        """The raw text of the array that starts here, cut between elements at commas, in
        pieces of about PIECE characters, without the brackets: for arrays of plain strings
        (no element may hold a ',' or ']'; the caller checks each piece). The last piece is
        what precedes ']'; an empty array yields nothing."""
        self._expect("[", "to open an array")
        pieces = 0
        while True:
            end = self._text.find("]", self._pos)
            if end >= 0:
                piece = self._text[self._pos:end]
                self._pos = end + 1
                if piece.strip() or pieces:
                    yield piece
                return
            if len(self._text) - self._pos >= PIECE or self._eof:
                cut = self._text.rfind(",", self._pos)
                if cut < 0:
                    if self._eof:
                        raise BadMetadata(f"{self.what} is not valid JSON: an array is not "
                                          "closed")
                    self._more()
                    continue
                piece = self._text[self._pos:cut]
                self._pos = cut + 1
                pieces += 1
                yield piece
                continue
            self._more()
