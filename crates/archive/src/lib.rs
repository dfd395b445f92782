//! BagIt 1.0 (RFC 8493) archives for ferry.
//!
//! Follows the data: [`pathmap`] turns source names into safe payload paths, the bag writer
//! streams items into a folder or a zip and writes the manifests last, [`reader`] opens any
//! bag (folder or zip, from any tool) and [`verify`] checks it with no knowledge of the source.

mod newfile;
pub mod pathmap;
pub mod reader;
pub mod record;
pub mod tagfiles;
pub mod verify;
pub mod writer;
pub mod zipwrite;
