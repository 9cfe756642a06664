//! Held-out classification metrics: top-1 accuracy, per-class precision / recall / F1, macro F1,
//! the confusion matrix (as a terminal table, JSON through serde, and a PNG heat map), plus
//! [`cross_entropy`] of one sample's logits.
//!
//! Undefined figures are `None`, never a made-up `0` or `1`: an empty validation set has no
//! top-1, a class that was never predicted has no precision, a class without samples has no
//! recall. The rules are spelled out on [`ClassMetrics`].
//!
//! The PNG text is drawn with DejaVu Sans 2.37, compiled into the library from
//! `assets/fonts/DejaVuSans.ttf` (licence beside it), so no system font is needed. DejaVu Sans
//! covers Latin, Greek and Cyrillic; characters it lacks (CJK ideographs, emoji, ...) are drawn as
//! its empty-box "missing glyph" and never make rendering fail.

mod draw;

pub(crate) use draw::{FONT, font};
#[cfg(test)]
use draw::{MAX_NAME_CHARS, blues, shorten};

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::ImageEncoder;
use image::codecs::png::PngEncoder;
use plotters::backend::{BitMapBackend, RGBPixel};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, FontTransform, RGBColor, register_font};
use serde::{Deserialize, Serialize};
use unicode_width::UnicodeWidthStr;

use crate::{Error, Result};

/// Precision, recall and F1 of one class, computed one-vs-rest from a [`ConfusionMatrix`].
///
/// With `tp` = samples of this class predicted as this class, `fp` = samples of other classes
/// predicted as this class, `fn` = samples of this class predicted as another class:
///
/// - `precision = tp / (tp + fp)`; `None` when the class was never predicted (`tp + fp = 0`).
/// - `recall = tp / (tp + fn)`; `None` when the class has no samples (`support = 0`).
/// - `f1 = 2·tp / (2·tp + fp + fn)` (the harmonic mean of precision and recall, written so that it
///   stays defined when only one of them is); `None` only when the class neither occurs nor is
///   predicted (`tp + fp + fn = 0`). A class that has samples but is never predicted therefore
///   gets `f1 = Some(0.0)` and pulls the macro F1 down, as it should.
///
/// This is scikit-learn's `precision_recall_fscore_support` with the `zero_division` cases
/// reported as `None` instead of a substituted number. All values lie in `[0, 1]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ClassMetrics {
    /// Class name, as in the label list (index order).
    pub class: String,
    /// Number of evaluated samples whose true class is this one (row sum of the matrix).
    pub support: usize,
    /// `tp / (tp + fp)`, `None` when the class was never predicted.
    pub precision: Option<f64>,
    /// `tp / (tp + fn)`, `None` when the class has no samples.
    pub recall: Option<f64>,
    /// `2·tp / (2·tp + fp + fn)`, `None` when `tp + fp + fn = 0`.
    pub f1: Option<f64>,
}

/// A confusion matrix over `classes.len()` classes: `counts[t][p]` is the number of samples whose
/// true class index is `t` and whose predicted class index is `p` (top-1 of the logits).
///
/// Invariant: `counts` is square with side `classes.len()`. Values built with [`Self::new`] or
/// [`Self::from_predictions`] keep it, and deserialising JSON that breaks it is an error. Every
/// read accessor treats a missing entry as `0` rather than panicking.
///
/// Serialised as `{"classes": [...], "counts": [[...], ...]}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(try_from = "ConfusionMatrixData")]
pub struct ConfusionMatrix {
    /// Class names in label-index order (index = line of `labels.txt`).
    pub classes: Vec<String>,
    /// `counts[true][pred]`, `classes.len()` rows of `classes.len()` counts.
    pub counts: Vec<Vec<u64>>,
}

/// The unchecked serde form of [`ConfusionMatrix`], validated by `TryFrom`.
#[derive(Deserialize)]
struct ConfusionMatrixData {
    classes: Vec<String>,
    counts: Vec<Vec<u64>>,
}

impl TryFrom<ConfusionMatrixData> for ConfusionMatrix {
    type Error = String;

    fn try_from(data: ConfusionMatrixData) -> std::result::Result<Self, String> {
        let n = data.classes.len();
        if data.counts.len() != n {
            return Err(format!(
                "confusion matrix has {} classes but {} rows of counts",
                n,
                data.counts.len()
            ));
        }
        if let Some((i, row)) = data.counts.iter().enumerate().find(|(_, r)| r.len() != n) {
            return Err(format!(
                "confusion matrix row {i} has {} counts, expected {n} (one per class)",
                row.len()
            ));
        }
        Ok(ConfusionMatrix {
            classes: data.classes,
            counts: data.counts,
        })
    }
}

impl ConfusionMatrix {
    /// An all-zero matrix over `classes` (names in label-index order).
    pub fn new(classes: Vec<String>) -> Self {
        let n = classes.len();
        Self {
            classes,
            counts: vec![vec![0; n]; n],
        }
    }

    /// Counts one sample with true class index `truth` and predicted class index `pred`.
    ///
    /// # Panics
    /// If either index is `>= classes.len()`: indices come from the label list and from the
    /// arg-max of `classes.len()` logits, so an out-of-range index is a bug in the caller, not a
    /// property of the data.
    pub fn add(&mut self, truth: usize, pred: usize) {
        let n = self.classes.len();
        assert!(
            truth < n && pred < n,
            "confusion matrix over {n} classes: class index out of range (true {truth}, predicted {pred})"
        );
        self.counts[truth][pred] += 1;
    }

    /// Builds the matrix from parallel slices of true and predicted class indices (one entry per
    /// evaluated sample).
    ///
    /// # Panics
    /// If the slices differ in length or an index is `>= classes.len()` (see [`Self::add`]).
    pub fn from_predictions(classes: Vec<String>, truth: &[usize], pred: &[usize]) -> Self {
        assert_eq!(
            truth.len(),
            pred.len(),
            "confusion matrix: {} true labels but {} predictions",
            truth.len(),
            pred.len()
        );
        let mut m = Self::new(classes);
        for (&t, &p) in truth.iter().zip(pred) {
            m.add(t, p);
        }
        m
    }

    /// Number of classes (side of the matrix).
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// `counts[t][p]`, or 0 where the entry is missing.
    fn count(&self, t: usize, p: usize) -> u64 {
        self.counts
            .get(t)
            .and_then(|row| row.get(p))
            .copied()
            .unwrap_or(0)
    }

    /// Samples of class `t` (row sum).
    fn row_sum(&self, t: usize) -> u64 {
        (0..self.num_classes()).map(|p| self.count(t, p)).sum()
    }

    /// Samples predicted as class `p` (column sum).
    fn col_sum(&self, p: usize) -> u64 {
        (0..self.num_classes()).map(|t| self.count(t, p)).sum()
    }

    /// Total number of samples counted.
    pub fn total(&self) -> u64 {
        (0..self.num_classes()).map(|t| self.row_sum(t)).sum()
    }

    /// Number of correctly classified samples (the diagonal's sum).
    pub fn correct(&self) -> u64 {
        (0..self.num_classes()).map(|i| self.count(i, i)).sum()
    }

    /// Top-1 accuracy `correct / total` in `[0, 1]`; `None` when no sample was counted, so no
    /// figure is made up for an empty validation set.
    pub fn top1(&self) -> Option<f64> {
        ratio(self.correct(), self.total())
    }

    /// Precision, recall and F1 of every class, in class-index order; the `None` rules are on
    /// [`ClassMetrics`].
    pub fn per_class(&self) -> Vec<ClassMetrics> {
        (0..self.num_classes())
            .map(|c| {
                let tp = self.count(c, c);
                let support = self.row_sum(c);
                let predicted = self.col_sum(c);
                let fp = predicted - tp;
                let fn_ = support - tp;
                ClassMetrics {
                    class: self.classes[c].clone(),
                    support: to_usize(support),
                    precision: ratio(tp, predicted),
                    recall: ratio(tp, support),
                    f1: ratio(2 * tp, 2 * tp + fp + fn_),
                }
            })
            .collect()
    }

    /// Macro-averaged F1: the unweighted mean of the per-class F1 over the classes whose F1 is
    /// defined (those that occur in the truth or in the predictions). This equals scikit-learn's
    /// `f1_score(y_true, y_pred, average="macro")` without a `labels` argument. `None` when no
    /// class has a defined F1 (nothing was counted).
    pub fn macro_f1(&self) -> Option<f64> {
        let f1s: Vec<f64> = self.per_class().iter().filter_map(|m| m.f1).collect();
        if f1s.is_empty() {
            None
        } else {
            Some(f1s.iter().sum::<f64>() / f1s.len() as f64)
        }
    }

    /// Plain-text table for the terminal: one row per true class, one column per predicted class.
    ///
    /// Columns are headed by class index; each row starts with its index and the whole class name
    /// (any Unicode, e.g. `красный`, `red apple`, padded by display width so CJK names align), so
    /// the row labels are the legend of the columns and 12+ classes stay narrow. The last column
    /// is the row total (samples of that class), the last row the column totals (predictions of
    /// that class). Ends with a newline.
    pub fn to_text(&self) -> String {
        let n = self.num_classes();
        let mut out = String::new();
        if n == 0 {
            out.push_str("confusion matrix: no classes\n");
            return out;
        }
        out.push_str("confusion matrix (rows: true class, columns: predicted class index)\n");

        let idx_w = (n - 1).to_string().len();
        let labels: Vec<String> = self
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{i:>idx_w$} {c}"))
            .collect();
        let footer = "predicted total";
        let label_w = labels
            .iter()
            .map(|l| l.width())
            .max()
            .unwrap_or(0)
            .max(footer.width());
        let max_count = self.counts.iter().flatten().copied().max().unwrap_or(0);
        let cell_w = max_count.to_string().len().max(idx_w).max(2) + 1;
        let total = self.total();
        let tot_w = total.to_string().len().max("total".len()) + 1;

        // Header.
        out.push_str(&pad_right("", label_w));
        for p in 0..n {
            out.push_str(&format!("{p:>cell_w$}"));
        }
        out.push_str(&format!(" |{:>tot_w$}\n", "total"));
        // Rows.
        for (t, label) in labels.iter().enumerate() {
            out.push_str(&pad_right(label, label_w));
            for p in 0..n {
                out.push_str(&format!("{:>cell_w$}", self.count(t, p)));
            }
            out.push_str(&format!(" |{:>tot_w$}\n", self.row_sum(t)));
        }
        // Column totals.
        out.push_str(&"-".repeat(label_w + n * cell_w + 2 + tot_w));
        out.push('\n');
        out.push_str(&pad_right(footer, label_w));
        for p in 0..n {
            out.push_str(&format!("{:>cell_w$}", self.col_sum(p)));
        }
        out.push_str(&format!(" |{total:>tot_w$}\n"));
        out
    }
}

/// A full evaluation of a model on a held-out set: what `nanoclass eval` prints and saves as
/// `eval.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EvalReport {
    /// Top-1 accuracy in `[0, 1]`, `None` for an empty set.
    pub top1: Option<f64>,
    /// Number of evaluated samples.
    pub n: usize,
    /// 95% Wilson score interval of `top1` (`[low, high]` in `[0, 1]`), `None` for an empty
    /// set ([`wilson_interval`]).
    #[serde(default)]
    pub top1_interval: Option<[f64; 2]>,
    /// Per-class precision / recall / F1 in class-index order.
    pub per_class: Vec<ClassMetrics>,
    /// The confusion matrix the figures above were computed from.
    pub confusion: ConfusionMatrix,
    /// Mean cross-entropy loss per sample (natural log, nats), `None` when not computed.
    pub loss: Option<f64>,
}

impl EvalReport {
    /// Computes every figure from `confusion`; `loss` is the mean per-sample cross-entropy when
    /// the caller measured it.
    pub fn new(confusion: ConfusionMatrix, loss: Option<f64>) -> Self {
        Self {
            top1: confusion.top1(),
            top1_interval: wilson_interval(confusion.correct(), confusion.total())
                .map(|(lo, hi)| [lo, hi]),
            n: to_usize(confusion.total()),
            per_class: confusion.per_class(),
            confusion,
            loss,
        }
    }

    /// Macro F1 of the confusion matrix (see [`ConfusionMatrix::macro_f1`]).
    pub fn macro_f1(&self) -> Option<f64> {
        self.confusion.macro_f1()
    }

    /// The report for the terminal: a summary line (samples, top-1, macro F1, loss), a per-class
    /// table (class, support, precision, recall, F1 as percentages, `-` where undefined) and the
    /// confusion matrix of [`ConfusionMatrix::to_text`].
    pub fn to_text(&self) -> String {
        let interval = self
            .top1_interval
            .map(|[lo, hi]| format!(" (95% interval {:.1}-{:.1}%)", lo * 100.0, hi * 100.0))
            .unwrap_or_default();
        let mut out = format!(
            "{} samples, top-1 {}{interval}, macro F1 {}",
            self.n,
            fmt_pct(self.top1),
            fmt_pct(self.macro_f1())
        );
        if let Some(loss) = self.loss {
            out.push_str(&format!(", loss {loss:.4}"));
        }
        if let Some(warning) = too_few_to_tell(self.n, self.top1_interval) {
            out.push_str(&format!("\nwarning: {warning}"));
        }
        out.push_str("\n\n");
        let idx_w = self.per_class.len().saturating_sub(1).to_string().len();
        let names: Vec<String> = self
            .per_class
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{i:>idx_w$} {}", m.class))
            .collect();
        let name_w = names
            .iter()
            .map(|s| s.width())
            .max()
            .unwrap_or(0)
            .max("class".len());
        let sup_w = self
            .per_class
            .iter()
            .map(|m| m.support.to_string().len())
            .max()
            .unwrap_or(0)
            .max("support".len());
        out.push_str(&format!(
            "{} {:>sup_w$} {:>9} {:>9} {:>9}\n",
            pad_right("class", name_w),
            "support",
            "precision",
            "recall",
            "F1"
        ));
        for (name, m) in names.iter().zip(&self.per_class) {
            out.push_str(&format!(
                "{} {:>sup_w$} {:>9} {:>9} {:>9}\n",
                pad_right(name, name_w),
                m.support,
                fmt_pct(m.precision),
                fmt_pct(m.recall),
                fmt_pct(m.f1)
            ));
        }
        out.push('\n');
        out.push_str(&self.confusion.to_text());
        out
    }

    /// Writes the report as pretty-printed JSON to `path`, atomically (scratch file beside `path`,
    /// then renamed).
    ///
    /// # Errors
    /// [`Error::Io`] naming `path` when the file cannot be written.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_atomic(path, |file| {
            serde_json::to_writer_pretty(&mut *file, self).map_err(std::io::Error::other)?;
            file.write_all(b"\n")
        })
    }
}

/// Cross-entropy of one row of logits against the true class, in nats.
pub fn cross_entropy(logits: &[f32], truth: usize) -> f64 {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = m + logits
        .iter()
        .map(|&x| (x as f64 - m).exp())
        .sum::<f64>()
        .ln();
    lse - logits[truth] as f64
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// `num / den` as f64, `None` when `den == 0`.
fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Sample counts fit `usize` on every supported target; saturate rather than wrap otherwise.
fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// `Some(0.8333)` -> `"83.3%"`, `None` -> `"-"`.
/// The 95% Wilson score interval of a proportion: `successes` of `n` trials (z = 1.959964, the
/// normal distribution's 97.5% quantile; E. B. Wilson, "Probable inference, the law of
/// succession, and statistical inference", JASA 22, 1927). Unlike `p ± z·sqrt(p(1-p)/n)` it stays
/// inside `[0, 1]` and is not zero-width at 0 or n successes: 6 of 6 correct gives
/// `(0.610, 1.0)`. `None` when `n == 0`.
pub fn wilson_interval(successes: u64, n: u64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let z = 1.959_963_984_540_054_f64;
    let (k, n) = (successes.min(n) as f64, n as f64);
    let p = k / n;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// Half-width of the 95% interval above which a held-out figure is flagged as resting on too
/// few images (10 points either way).
pub const TOO_WIDE: f64 = 0.10;

/// The warning to print with a top-1 figure whose 95% interval is wider than ±[`TOO_WIDE`]:
/// `None` when the figure is precise enough.
pub fn too_few_to_tell(n: usize, interval: Option<[f64; 2]>) -> Option<String> {
    let [lo, hi] = interval?;
    ((hi - lo) / 2.0 > TOO_WIDE).then(|| {
        format!(
            "{n} held-out images are too few to tell: the true top-1 could be anywhere from {:.0}% to {:.0}% (95% interval); hold out more images (or capture more) before trusting it",
            lo * 100.0,
            hi * 100.0
        )
    })
}

/// The 95% interval of a held-out top-1 known as a fraction of `n` images (a run's summary
/// keeps the fraction): [`wilson_interval`] of its `round(top1 * n)` correct answers.
pub fn top1_interval(top1: f64, n: usize) -> Option<[f64; 2]> {
    let k = (top1 * n as f64).round() as u64;
    wilson_interval(k, n as u64).map(|(lo, hi)| [lo, hi])
}

/// `top-1 0.9583 (115/120, 95% interval 0.906-0.982)`-style text of a held-out figure.
pub fn top1_text(top1: f64, n: usize) -> String {
    let k = (top1 * n as f64).round() as u64;
    match top1_interval(top1, n) {
        Some([lo, hi]) => format!("{top1:.4} ({k}/{n}, 95% interval {lo:.3}-{hi:.3})"),
        None => format!("{top1:.4}"),
    }
}

fn fmt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{:.1}%", v * 100.0))
}

/// Pads `s` with spaces to `width` terminal columns (display width, so CJK counts double).
fn pad_right(s: &str, width: usize) -> String {
    let pad = width.saturating_sub(s.width());
    format!("{s}{}", " ".repeat(pad))
}

/// [`crate::fs::write_atomic_with`] through a buffered writer.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
) -> Result<()> {
    crate::fs::write_atomic_with(path, |file| {
        let mut w = BufWriter::new(&*file);
        write(&mut w)?;
        w.flush()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blues_ends_are_the_colorbrewer_stops() {
        assert_eq!(blues(0.0), RGBColor(0xf7, 0xfb, 0xff));
        assert_eq!(blues(1.0), RGBColor(0x08, 0x30, 0x6b));
        // Halfway is the 5th stop exactly.
        assert_eq!(blues(0.5), RGBColor(0x6b, 0xae, 0xd6));
    }

    #[test]
    fn shorten_keeps_short_names_and_cuts_long_ones_on_char_boundaries() {
        assert_eq!(shorten("красный"), "красный");
        let long = "я".repeat(40);
        let s = shorten(&long);
        assert_eq!(s.chars().count(), MAX_NAME_CHARS);
        assert!(s.ends_with('…'));
    }

    #[test]
    fn pad_right_counts_display_width() {
        // A CJK ideograph is two terminal columns wide.
        assert_eq!(pad_right("猫", 4), "猫  ");
        assert_eq!(pad_right("red", 4), "red ");
        assert_eq!(pad_right("toolong", 3), "toolong");
    }

    #[test]
    fn wilson_intervals_match_the_closed_form() {
        // (k + z²/2 ± z·sqrt(k(n-k)/n + z²/4)) / (n + z²), computed independently.
        let cases = [
            (6, 6, 0.609_665_712_097_834_6, 1.0),
            (115, 120, 0.906_159_147_662_964_6, 0.982_073_283_119_890_5),
            (0, 10, 0.0, 0.277_532_799_862_889_2),
            (41, 50, 0.692_039_463_256_992_2, 0.902_298_073_297_658_2),
        ];
        for (k, n, lo, hi) in cases {
            let (l, h) = wilson_interval(k, n).unwrap();
            assert!(
                (l - lo).abs() < 1e-12 && (h - hi).abs() < 1e-12,
                "{k}/{n}: {l} {h}"
            );
        }
        assert_eq!(wilson_interval(0, 0), None);
        assert_eq!(
            top1_text(115.0 / 120.0, 120),
            "0.9583 (115/120, 95% interval 0.906-0.982)"
        );
    }

    #[test]
    fn small_held_out_sets_are_flagged() {
        // 6 of 6: 61-100%, far too wide; 115 of 120: ±3.8 points, fine.
        let six = wilson_interval(6, 6).map(|(l, h)| [l, h]);
        let w = too_few_to_tell(6, six).expect("6 images are too few");
        assert!(
            w.contains("6 held-out images") && w.contains("61% to 100%"),
            "{w}"
        );
        let many = wilson_interval(115, 120).map(|(l, h)| [l, h]);
        assert_eq!(too_few_to_tell(120, many), None);
        // The report carries the interval and prints the warning.
        let mut cm = ConfusionMatrix::new(vec!["a".into(), "b".into()]);
        for _ in 0..3 {
            cm.add(0, 0);
            cm.add(1, 1);
        }
        let r = EvalReport::new(cm, None);
        assert_eq!(r.top1_interval, six);
        assert!(
            r.to_text().contains("95% interval 61.0-100.0%"),
            "{}",
            r.to_text()
        );
        assert!(r.to_text().contains("too few to tell"));
    }
}
