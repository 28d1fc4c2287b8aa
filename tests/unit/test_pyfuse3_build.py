"""scripts/install rebuilds pyfuse3 so that a read's reply is sent without the GIL
(scripts/build-pyfuse3 says why); this fails if a pyfuse3 release no longer takes the
patch, instead of the mount quietly losing the gain."""

from __future__ import annotations

from pathlib import Path

import pyfuse3


def test_the_installed_pyfuse3_sends_read_replies_without_the_gil() -> None:
    handlers = (Path(pyfuse3.__file__).parent / "handlers.pxi").read_text()
    start = handlers.index("async def fuse_read_async")
    body = handlers[start:handlers.index("\nasync def ", start + 1)]
    assert "with nogil:  # bakfs: the reply is sent without the GIL" in body
    reply = body.index("fuse_reply_buf(c.req, <const_char*> pybuf.buf")
    assert body.rfind("with nogil:", 0, reply) > body.rfind("PyObject_GetBuffer", 0, reply)
