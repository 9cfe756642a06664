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

    /// Writes a PNG heat map of the matrix to `path`: rows = true class, columns = predicted
    /// class, class names on both axes (column names rotated to read bottom-to-top; names longer
    /// than 32 characters are shortened with `…`), the count printed in every cell, and a title
    /// line `title` over a line with top-1, the number of samples and macro F1.
    ///
    /// Cell colour is the count divided by its row total, i.e. the share of the true class's
    /// samples that went to that prediction (0 = white, 1 = dark blue, ColorBrewer "Blues" as in
    /// matplotlib; a colour bar shows the scale), so small classes are as readable as large ones.
    /// Rows of classes without samples are grey.
    ///
    /// Size: cells of 36–96 px (96 px for 2 classes, 60 px for 12) plus room for the longest
    /// name, so about 380×340 px for 2 short names and about 1100×1070 px for 12 names of up to
    /// 32 characters; above 66 classes the matrix is held to about 2400 px a side and counts /
    /// names that no longer fit are left out. RGB, 8 bit.
    ///
    /// The write is atomic: the image goes to a scratch file beside `path` that is then renamed
    /// over it, so a reader never sees a half-written PNG.
    ///
    /// # Errors
    /// [`Error::Io`] naming `path` when the scratch file cannot be created, written or renamed
    /// (e.g. the parent folder does not exist); [`Error::Other`] naming `path` if drawing fails.
    pub fn write_png(&self, path: &Path, title: &str) -> Result<()> {
        let (w, h, rgb) = self.render_rgb(title).map_err(|reason| {
            Error::Other(format!(
                "{}: cannot draw the confusion matrix: {reason}",
                path.display()
            ))
        })?;
        write_atomic(path, |file| {
            PngEncoder::new(file)
                .write_image(&rgb, w, h, image::ExtendedColorType::Rgb8)
                .map_err(std::io::Error::other)
        })
    }

    /// Draws the heat map into an RGB8 buffer, returning `(width, height, pixels)`.
    fn render_rgb(&self, title: &str) -> std::result::Result<(u32, u32, Vec<u8>), String> {
        font()?;
        let layout = Layout::new(self, title)?;
        let (w, h) = (layout.width, layout.height);
        let mut buf = vec![0u8; w as usize * h as usize * 3];
        {
            let backend = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut buf, (w, h))
                .map_err(|e| e.to_string())?;
            let root = backend.into_drawing_area();
            self.draw(&root, &layout).map_err(|e| e.to_string())?;
            root.present().map_err(|e| e.to_string())?;
        }
        Ok((w, h, buf))
    }

    /// Draws everything described by `layout` onto `root`.
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
        l: &Layout,
    ) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let n = self.num_classes();
        root.fill(&WHITE)?;

        // Title and summary line.
        draw_label(
            root,
            &l.title,
            (MARGIN, MARGIN),
            TITLE_PX,
            HPos::Left,
            FontTransform::None,
            TEXT,
        )?;
        draw_label(
            root,
            &l.subtitle,
            (MARGIN, MARGIN + TITLE_PX + 6),
            SUBTITLE_PX,
            HPos::Left,
            FontTransform::None,
            MUTED,
        )?;

        let (x0, y0, cell) = (l.matrix_x, l.matrix_y, l.cell);
        let side = cell * n as i32;

        // Cells.
        for t in 0..n {
            let row_total = self.row_sum(t);
            for p in 0..n {
                let count = self.count(t, p);
                let share = ratio(count, row_total);
                let fill = share.map_or(NO_SAMPLES, blues);
                let cx0 = x0 + p as i32 * cell;
                let cy0 = y0 + t as i32 * cell;
                root.draw(&Rectangle::new(
                    [(cx0, cy0), (cx0 + cell, cy0 + cell)],
                    fill.filled(),
                ))?;
                if let Some(px) = l.count_px {
                    let ink = if share.unwrap_or(0.0) > 0.5 {
                        WHITE
                    } else {
                        TEXT
                    };
                    draw_label(
                        root,
                        &count.to_string(),
                        (cx0 + cell / 2, cy0 + cell / 2),
                        px,
                        HPos::Center,
                        FontTransform::None,
                        ink,
                    )?;
                }
            }
        }
        // Thin grid lines between cells, when cells are large enough to show them.
        if cell >= 8 {
            for k in 0..=n as i32 {
                let off = k * cell;
                root.draw(&PathElement::new(
                    [(x0 + off, y0), (x0 + off, y0 + side)],
                    GRID,
                ))?;
                root.draw(&PathElement::new(
                    [(x0, y0 + off), (x0 + side, y0 + off)],
                    GRID,
                ))?;
            }
        }

        // Class names: rows (true class) right-aligned left of the matrix, columns (predicted
        // class) rotated below it, reading bottom-to-top with their ends at the matrix.
        if let Some(px) = l.label_px {
            for (i, name) in l.names.iter().enumerate() {
                let mid = i as i32 * cell + cell / 2;
                draw_label(
                    root,
                    name,
                    (x0 - 8, y0 + mid),
                    px,
                    HPos::Right,
                    FontTransform::None,
                    TEXT,
                )?;
                draw_label(
                    root,
                    name,
                    (x0 + mid, y0 + side + 8),
                    px,
                    HPos::Right,
                    FontTransform::Rotate270,
                    TEXT,
                )?;
            }
        }

        // Axis titles.
        draw_label(
            root,
            "predicted class",
            (x0 + side / 2, l.height as i32 - MARGIN - AXIS_PX / 2),
            AXIS_PX,
            HPos::Center,
            FontTransform::None,
            TEXT,
        )?;
        draw_label(
            root,
            "true class",
            (MARGIN + AXIS_PX / 2, y0 + side / 2),
            AXIS_PX,
            HPos::Center,
            FontTransform::Rotate270,
            TEXT,
        )?;

        // Colour bar: share of the true class, 0 at the bottom, 1 at the top.
        let bx = x0 + side + BAR_GAP;
        let bar_h = side.max(1);
        for dy in 0..bar_h {
            let share = 1.0 - f64::from(dy) / f64::from((bar_h - 1).max(1));
            root.draw(&Rectangle::new(
                [(bx, y0 + dy), (bx + BAR_W, y0 + dy + 1)],
                blues(share).filled(),
            ))?;
        }
        root.draw(&Rectangle::new([(bx, y0), (bx + BAR_W, y0 + bar_h)], GRID))?;
        for (share, text) in [(1.0, "100%"), (0.5, "50%"), (0.0, "0%")] {
            let y = y0 + ((1.0 - share) * f64::from(bar_h - 1)).round() as i32;
            draw_label(
                root,
                text,
                (bx + BAR_W + 5, y),
                BAR_PX,
                HPos::Left,
                FontTransform::None,
                MUTED,
            )?;
        }
        draw_label(
            root,
            "share of true class",
            (
                bx + BAR_W + 5 + l.bar_label_w + 6 + BAR_PX / 2,
                y0 + bar_h / 2,
            ),
            BAR_PX,
            HPos::Center,
            FontTransform::Rotate270,
            MUTED,
        )?;
        Ok(())
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
        let mut out = format!(
            "{} samples, top-1 {}, macro F1 {}",
            self.n,
            fmt_pct(self.top1),
            fmt_pct(self.macro_f1())
        );
        if let Some(loss) = self.loss {
            out.push_str(&format!(", loss {loss:.4}"));
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

// ---------------------------------------------------------------------------------------------
// PNG drawing.

/// DejaVu Sans 2.37 (Bitstream Vera licence + public-domain DejaVu changes, see
/// `assets/fonts/LICENSE-DejaVu.txt`), compiled in so rendering needs no system font.
static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// The family name the embedded font is registered under in plotters' font table.
pub(crate) const FONT: &str = "nanoclass-dejavu-sans";

/// The embedded font, parsed once, and registered with plotters under [`FONT`].
pub(crate) fn font() -> std::result::Result<&'static FontRef<'static>, String> {
    static PARSED: OnceLock<std::result::Result<FontRef<'static>, String>> = OnceLock::new();
    PARSED
        .get_or_init(|| {
            const BAD: &str = "the embedded DejaVu Sans font could not be parsed";
            register_font(FONT, FontStyle::Normal, DEJAVU_SANS).map_err(|_| BAD.to_string())?;
            FontRef::try_from_slice(DEJAVU_SANS).map_err(|_| BAD.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Outer margin, px.
const MARGIN: i32 = 16;
/// Title font size, px (plotters/ab_glyph "px scale": ascender-to-descender height).
const TITLE_PX: i32 = 22;
/// Summary-line font size, px.
const SUBTITLE_PX: i32 = 15;
/// Axis-title font size, px.
const AXIS_PX: i32 = 16;
/// Largest class-name font size, px.
const LABEL_PX: i32 = 15;
/// Colour-bar label font size, px.
const BAR_PX: i32 = 13;
/// Gap between the matrix and the colour bar, and the bar's width, px.
const BAR_GAP: i32 = 16;
const BAR_W: i32 = 14;
/// Smallest font size worth drawing, px; below it counts / names are left out.
const MIN_TEXT_PX: i32 = 7;
/// Class names longer than this many characters are shortened with `…` in the PNG.
const MAX_NAME_CHARS: usize = 32;

const TEXT: RGBColor = RGBColor(33, 33, 33);
const MUTED: RGBColor = RGBColor(90, 90, 90);
const GRID: RGBColor = RGBColor(200, 200, 200);
/// Fill of rows whose class has no samples (shares undefined).
const NO_SAMPLES: RGBColor = RGBColor(225, 225, 225);

/// ColorBrewer "Blues" (9 classes, Cynthia Brewer; the stops of matplotlib's `Blues`), from
/// `#f7fbff` (share 0) to `#08306b` (share 1).
const BLUES: [(u8, u8, u8); 9] = [
    (0xf7, 0xfb, 0xff),
    (0xde, 0xeb, 0xf7),
    (0xc6, 0xdb, 0xef),
    (0x9e, 0xca, 0xe1),
    (0x6b, 0xae, 0xd6),
    (0x42, 0x92, 0xc6),
    (0x21, 0x71, 0xb5),
    (0x08, 0x51, 0x9c),
    (0x08, 0x30, 0x6b),
];

/// Linear interpolation in [`BLUES`] for `share` in `[0, 1]` (clamped).
fn blues(share: f64) -> RGBColor {
    let s = share.clamp(0.0, 1.0) * (BLUES.len() - 1) as f64;
    let i = (s.floor() as usize).min(BLUES.len() - 2);
    let f = s - i as f64;
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * f).round() as u8;
    let (a, b) = (BLUES[i], BLUES[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// One glyph of a laid-out line: the character and the offset, in px along the line from its
/// start, at which plotters must place the glyph's pixel box.
struct PlacedGlyph {
    ch: char,
    offset: f32,
}

/// Lays `text` out at `px` in the embedded font: glyph origins advance by the font's advance
/// widths and kerning, and each glyph's box starts at its origin plus its left side bearing.
/// Returns the glyphs to draw (those with an outline) and the line's advance width in px.
///
/// plotters' own ab_glyph text drawing starts every glyph at its pixel box rather than at its
/// origin, losing the left side bearing, which spaces digits unevenly ("0.7 56"); drawing one
/// glyph at a time at these offsets keeps DejaVu's metrics.
fn layout_line(text: &str, px: i32) -> std::result::Result<(Vec<PlacedGlyph>, f32), String> {
    let font = font()?.as_scaled(PxScale::from(px as f32));
    let mut glyphs = Vec::new();
    let mut pen = 0.0f32;
    let mut prev = None;
    for ch in text.chars() {
        let id = font.glyph_id(ch);
        if let Some(p) = prev {
            pen += font.kern(p, id);
        }
        if let Some(outline) = font.outline_glyph(id.with_scale(font.scale())) {
            glyphs.push(PlacedGlyph {
                ch,
                offset: pen + outline.px_bounds().min.x,
            });
        }
        pen += font.h_advance(id);
        prev = Some(id);
    }
    Ok((glyphs, pen))
}

/// Advance width in px of `text` at `px` in the embedded font, rounded up.
fn text_width(text: &str, px: i32) -> std::result::Result<i32, String> {
    Ok(layout_line(text, px)?.1.ceil() as i32)
}

/// Draws `text` with its horizontal anchor `h` at `at.0` and its capitals vertically centred on
/// `at.1`. With [`FontTransform::Rotate270`] the line reads bottom-to-top and the same rules
/// apply along the rotated axes (anchor on `at.1`, capitals centred on `at.0`).
///
/// plotters' ab_glyph backend puts the baseline `px / 2` below the point it is given; DejaVu's
/// capital height is 0.63 of the px scale (ascender-to-descender height), so the capitals'
/// centre lies `0.19·px` below that point, which is the correction applied here.
fn draw_label<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    text: &str,
    at: (i32, i32),
    px: i32,
    h: HPos,
    transform: FontTransform,
    color: RGBColor,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    // The font was parsed while laying out the picture, so this cannot fail here; a line that
    // could not be laid out is left undrawn rather than aborting the picture.
    let Ok((glyphs, width)) = layout_line(text, px) else {
        return Ok(());
    };
    let start = match h {
        HPos::Left => 0.0,
        HPos::Center => -width / 2.0,
        HPos::Right => -width,
    };
    let shift = (f64::from(px) * 0.19).round() as i32;
    let style = (FONT, f64::from(px))
        .into_font()
        .transform(transform.clone())
        .color(&color)
        .pos(Pos::new(HPos::Left, VPos::Top));
    let mut buf = [0u8; 4];
    for g in glyphs {
        let along = (start + g.offset).round() as i32;
        let pos = match transform {
            FontTransform::Rotate270 => (at.0 - shift, at.1 - along),
            _ => (at.0 + along, at.1 - shift),
        };
        root.draw_text(g.ch.encode_utf8(&mut buf), &style, pos)?;
    }
    Ok(())
}

/// Shortens `name` to [`MAX_NAME_CHARS`] characters with a trailing `…`.
fn shorten(name: &str) -> String {
    if name.chars().count() <= MAX_NAME_CHARS {
        name.to_string()
    } else {
        let head: String = name.chars().take(MAX_NAME_CHARS - 1).collect();
        format!("{head}…")
    }
}

/// Geometry of the heat map, in px.
struct Layout {
    width: u32,
    height: u32,
    title: String,
    subtitle: String,
    /// Class names as drawn (shortened).
    names: Vec<String>,
    matrix_x: i32,
    matrix_y: i32,
    cell: i32,
    /// Font size of class names, `None` when cells are too small for text.
    label_px: Option<i32>,
    /// Font size of the counts, `None` when they do not fit.
    count_px: Option<i32>,
    /// Width of the widest colour-bar tick label.
    bar_label_w: i32,
}

impl Layout {
    fn new(m: &ConfusionMatrix, title: &str) -> std::result::Result<Self, String> {
        let n = m.num_classes() as i32;
        // 720 px of matrix, cells between 36 and 96 px; past 66 classes the matrix is held to
        // ~2400 px and cells shrink below 36 px.
        let cell = if n == 0 {
            96
        } else if n * 36 <= 2400 {
            (720 / n).clamp(36, 96)
        } else {
            (2400 / n).max(1)
        };
        let side = cell * n;

        let names: Vec<String> = m.classes.iter().map(|c| shorten(c)).collect();
        let label_px = Some(LABEL_PX.min(cell * 7 / 10)).filter(|&px| px >= MIN_TEXT_PX);
        let name_w = match label_px {
            Some(px) => names
                .iter()
                .map(|s| text_width(s, px))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let name_w = name_w.into_iter().max().unwrap_or(0);

        // Counts: the largest font up to 0.4 of a cell that fits the widest count.
        let widest = m
            .counts
            .iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(0)
            .to_string();
        let mut count_px = (cell * 2 / 5).min(20);
        while count_px >= MIN_TEXT_PX && text_width(&widest, count_px)? > cell - 6 {
            count_px -= 1;
        }
        let count_px = Some(count_px).filter(|&px| px >= MIN_TEXT_PX);

        let title = title.to_string();
        let subtitle = match m.top1() {
            Some(top1) => format!(
                "top-1 {:.1}% ({} of {} correct) · macro F1 {}",
                top1 * 100.0,
                m.correct(),
                m.total(),
                m.macro_f1()
                    .map_or_else(|| "-".to_string(), |f| format!("{:.3}", f)),
            ),
            None => "top-1 undefined: no samples were evaluated".to_string(),
        };
        let head_w = text_width(&title, TITLE_PX)?.max(text_width(&subtitle, SUBTITLE_PX)?);
        let bar_label_w = text_width("100%", BAR_PX)?;

        let axis_w = AXIS_PX + 8; // rotated "true class" column
        let labels_w = if name_w > 0 { name_w + 8 + 4 } else { 0 };
        let matrix_x = MARGIN + axis_w + labels_w;
        let matrix_y = MARGIN + TITLE_PX + 6 + SUBTITLE_PX + 18;
        let bar_w = BAR_GAP + BAR_W + 5 + bar_label_w + 6 + BAR_PX + 4;
        let width = (matrix_x + side + bar_w + MARGIN)
            .max(MARGIN + head_w + MARGIN)
            .max(MARGIN + axis_w + text_width("predicted class", AXIS_PX)? + MARGIN);
        let height = matrix_y + side + 8 + name_w + 10 + AXIS_PX + MARGIN;
        let width = u32::try_from(width).map_err(|e| e.to_string())?;
        let height = u32::try_from(height).map_err(|e| e.to_string())?;
        Ok(Self {
            width,
            height,
            title,
            subtitle,
            names,
            matrix_x,
            matrix_y,
            cell,
            label_px,
            count_px,
            bar_label_w,
        })
    }
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
}
