"""Bytes in: choosing full or incremental (`plan`), the per-window CPU work (`window`), the
streaming sink that uploads and commits (`sink`), sources (`source`), `bakfs backup`'s flow
(`run`) and the simple synchronous writer (`simple`). Knows nothing of reading, TSM or FUSE."""
