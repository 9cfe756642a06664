//! Helpers shared by the library's integration tests.

use std::path::{Path, PathBuf};

/// The shared real-image datasets, `../shared/data` beside the repository (or
/// `$NANOCLASS_DATA`). Their absence is a failure, not a skip.
pub fn shared_data() -> PathBuf {
    let dir = std::env::var_os("NANOCLASS_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
        PathBuf::from,
    );
    assert!(
        dir.join("hymenoptera").is_dir(),
        "real image data not found at {} (clone the repository beside shared/, or set NANOCLASS_DATA)",
        dir.display()
    );
    dir
}
