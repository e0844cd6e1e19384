//! The `soilstream` command line.

fn main() {}
