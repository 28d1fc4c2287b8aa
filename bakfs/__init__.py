"""bakfs: Cinder volume backups as files."""

__version__ = "0.1.0"
