//! Reading bags (folders and zips). (being written)
