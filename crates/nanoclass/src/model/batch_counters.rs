//! BatchNorm `num_batches_tracked` counters, kept beside the model.
//!
//! PyTorch's `BatchNorm2d` counts in `num_batches_tracked` (an int64 scalar in the state dict)
//! the batches it has normalised in train mode: every train-mode forward pass adds 1. PyTorch
//! reads the counter only when the layer's `momentum` is `None`: its running statistics are then
//! a cumulative average, updated with the factor `1 / num_batches_tracked`. With the default
//! `momentum=0.1` (torchvision's models, the EfficientNet-Lite port) the counter is a record and
//! nothing more; it matters to whoever continues training the exported model with
//! `momentum=None`.
//!
//! burn's BatchNorm has a fixed momentum and no counter, so nanoclass carries the counts itself:
//! - loading ([`crate::model::weights::load_net`]) takes each layer's count from the file: its
//!   `<layer>.num_batches_tracked` int64 tensor, or the [`METADATA_KEY`] metadata of a model
//!   nanoclass saved; a layer the file has no count for starts at 0;
//! - training adds 1 to every layer per optimizer step of the full phase ([`Self::add_batch`]),
//!   where the whole backbone runs in train mode. The head phase of `finetune`, and the
//!   `frozen` and `instant` modes, run the backbone in eval mode: the counts stay the file's;
//! - saved models carry the counts in their [`METADATA_KEY`] metadata ([`Self::to_metadata`]),
//!   and the `.pth` export writes them as `num_batches_tracked`.
//!
//! For reference: torchvision's ImageNet ResNet files predate the counter (torch 0.4.1 added it;
//! `BatchNorm._load_from_state_dict` fills a missing one with 0), and the EfficientNet-Lite0
//! file of the registry holds 0 in all 49 counters (it was converted from TensorFlow).

use std::collections::BTreeMap;

use burn::store::ModuleSnapshot;
use serde::{Deserialize, Serialize};

use super::Net;
use crate::Result;

/// Metadata key of a saved model holding its counters: a JSON object mapping each BatchNorm
/// layer (reference name, e.g. `layer1.0.bn1`) to its count.
pub const METADATA_KEY: &str = "num_batches_tracked";

/// State-dict suffix of a BatchNorm counter.
pub const COUNTER_SUFFIX: &str = ".num_batches_tracked";

/// The `num_batches_tracked` count of every BatchNorm layer of a model, by the layer's
/// reference name (torchvision / EfficientNet-Lite state-dict names without the parameter:
/// `bn1`, `layer2.0.downsample.1`, `_blocks.3._bn0`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BatchCounters {
    counts: BTreeMap<String, i64>,
}

impl BatchCounters {
    /// Counters for every BatchNorm layer of `net`: the value `known` has for the layer
    /// (reference name), else 0. Counts of `known` for layers `net` lacks are dropped.
    ///
    /// # Errors
    /// Only if the constant renaming rules of [`crate::model::weights`] do not compile.
    pub fn for_net(net: &Net, known: &BTreeMap<String, i64>) -> Result<Self> {
        let counts = batch_norm_layers(net)?
            .into_iter()
            .map(|layer| {
                let count = known.get(&layer).copied().unwrap_or(0);
                (layer, count)
            })
            .collect();
        Ok(BatchCounters { counts })
    }

    /// The count of `layer` (reference name), if the model has such a BatchNorm.
    pub fn get(&self, layer: &str) -> Option<i64> {
        self.counts.get(layer).copied()
    }

    /// Number of BatchNorm layers.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether there is no BatchNorm layer.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Every `(layer, count)`, layers sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.counts.iter().map(|(k, &v)| (k.as_str(), v))
    }

    /// Records one train-mode forward pass of the whole network: every count goes up by 1.
    pub fn add_batch(&mut self) {
        for count in self.counts.values_mut() {
            *count = count.saturating_add(1);
        }
    }

    /// Records one train-mode forward pass through the layers under `prefixes` (reference
    /// names such as `_blocks.14` or `layer4`): their counts go up by 1, the others stay.
    pub fn add_batch_in(&mut self, prefixes: &[String]) {
        for (layer, count) in &mut self.counts {
            let under = prefixes.iter().any(|p| {
                layer == p || (layer.starts_with(p.as_str()) && layer[p.len()..].starts_with('.'))
            });
            if under {
                *count = count.saturating_add(1);
            }
        }
    }

    /// The metadata value stored under [`METADATA_KEY`]: a JSON object `{layer: count}`.
    pub fn to_metadata(&self) -> String {
        serde_json::to_string(&self.counts).unwrap_or_else(|_| "{}".to_string())
    }

    /// Parses a [`METADATA_KEY`] metadata value.
    ///
    /// # Errors
    /// The value is not a JSON object of integers; the message shows the parser's reason.
    pub fn from_metadata(value: &str) -> std::result::Result<Self, String> {
        serde_json::from_str(value)
            .map(|counts| BatchCounters { counts })
            .map_err(|e| format!("`{METADATA_KEY}` metadata is not a JSON object of integers: {e}"))
    }
}

/// The BatchNorm layers of `net` in reference names, from its `running_var` buffers (the
/// tensor data is not read).
fn batch_norm_layers(net: &Net) -> Result<Vec<String>> {
    let mut layers = Vec::new();
    for t in net.collect(None, None, true) {
        // Renamed whole: the rules match `downsample.bn.` with its trailing dot.
        let name = super::names::reference_name(&t.name)?;
        if let Some(layer) = name.strip_suffix(".running_var") {
            layers.push(layer.to_string());
        }
    }
    Ok(layers)
}

#[cfg(test)]
mod tests {
    use burn::prelude::Device;

    use super::*;
    use crate::model::Arch;

    #[test]
    fn every_batch_norm_of_resnet18_is_counted_with_torchvision_names() {
        let net = Net::new(Arch::Resnet18, 3, &Device::flex());
        let known = BTreeMap::from([
            ("bn1".to_string(), 7),
            ("layer2.0.downsample.1".to_string(), 5),
            ("no_such_layer".to_string(), 9),
        ]);
        let mut c = BatchCounters::for_net(&net, &known).unwrap();
        // conv1's bn1, 8 blocks of 2, and 3 projection shortcuts.
        assert_eq!(c.len(), 1 + 8 * 2 + 3);
        assert_eq!(c.get("bn1"), Some(7));
        assert_eq!(c.get("layer2.0.downsample.1"), Some(5));
        assert_eq!(c.get("layer4.1.bn2"), Some(0));
        assert_eq!(c.get("layer2.0.downsample.bn"), None);
        assert_eq!(c.get("no_such_layer"), None);
        c.add_batch();
        c.add_batch();
        assert_eq!(c.get("bn1"), Some(9));
        assert_eq!(c.get("layer4.1.bn2"), Some(2));
        let back = BatchCounters::from_metadata(&c.to_metadata()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn efficientnet_lite0_has_49_batch_norms() {
        let net = Net::new(Arch::EfficientnetLite0, 2, &Device::flex());
        let c = BatchCounters::for_net(&net, &BTreeMap::new()).unwrap();
        assert_eq!(c.len(), 49);
        assert_eq!(c.get("_bn0"), Some(0));
        assert_eq!(c.get("_blocks.15._bn2"), Some(0));
    }

    #[test]
    fn malformed_metadata_is_an_error_naming_the_key() {
        let err = BatchCounters::from_metadata("{\"bn1\": \"four\"}").unwrap_err();
        assert!(err.contains(METADATA_KEY), "{err}");
    }
}
