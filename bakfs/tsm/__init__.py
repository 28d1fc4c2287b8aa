"""IBM Spectrum Protect (TSM) through dsmc: command lines and output parsing (`dsmc`), running
it (`runner`), the backup records in the object store (`records`), staging backups for
reading (`staging`) and what the TSM commands do (`operations`). Knows nothing of FUSE."""
