"""Bytes out: the verified chunk cache (`cache`), the read engine (`engine`) with read-ahead
(`readahead`), `bakfs restore` (`restore`, `target`, `direct`), `verify` and the simple
synchronous reader (`simple`). Knows nothing of making backups, TSM or FUSE."""
