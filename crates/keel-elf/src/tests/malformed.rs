//! Bad input: errors, never panics, never writes outside the mapping.
