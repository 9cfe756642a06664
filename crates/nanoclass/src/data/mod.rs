//! Data handling: one decoder, dataset scanning, splits, presets and batch loading.

pub mod category;
pub mod decode;
pub mod folder;
pub mod groups;
pub mod labels;
pub mod loader;
pub mod markers;
pub mod presets;
pub mod split;
