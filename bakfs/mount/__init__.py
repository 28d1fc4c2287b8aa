"""The FUSE gateway: the namespace (`namespace`), one reader object per backup file
(`readers`), the service the handlers share (`service`), backups written into `incoming/`
(`incoming`), what the mount tells about itself (`status`), the pyfuse3 adapter
(`fuse_ops`, the only module that knows pyfuse3 or errno), the daemon's life (`daemon`) and
the commands on a running mount (`control`)."""
