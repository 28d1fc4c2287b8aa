"""Which backups exist: discovery from the store's objects (`discovery`), the LMDB chunk index
(`index`), keeping it in step with the store (`sync`), the catalogue as running code sees it
(`front`), one writer per volume (`leases`) and the logic of `ls`, `delete` and `gc`
(`inventory`). Knows nothing of reading volume bytes, making backups, TSM or FUSE."""
