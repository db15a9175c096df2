//! A file-backed block device for host tests (to be written).
