//! Verifying bags. (being written)
