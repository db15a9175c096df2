//! Objects gcc builds at test time.
