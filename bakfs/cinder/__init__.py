"""OpenStack Cinder's chunked backup format: names, JSON documents, codecs, the incremental
rule and the chain overlay. Pure code: nothing here does I/O."""
