"""Library shared by the three daemons (sitter, snapshotter, backupserver) and the CLIs."""
