"""The TSM (IBM Storage Protect) backend: dsmc command lines and output (`dsmc`), running
dsmc (`runner`), the records of TSM backups in the object store (`catalog`), staging backups
into local files for reads (`staging`) and the CLI commands (`commands`).

Importing the package imports nothing heavy; each module says what it owns.
"""
