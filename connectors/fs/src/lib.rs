//! fs connector.
