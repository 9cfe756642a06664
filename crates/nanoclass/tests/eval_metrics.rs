//! Evaluation metrics: exact precision / recall / F1 / top-1 on hand-computed matrices, the
//! `None` rules for undefined figures, top-k ordering, softmax stability, the terminal table,
//! JSON round trips and the PNG heat map.

use std::path::Path;

use nanoclass::eval::metrics::{ConfusionMatrix, EvalReport};
use nanoclass::infer::scorer::{softmax, top_k};

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The hand-computed example: rows = true class, columns = predicted class.
///
/// ```text
///          cat dog bird | support
/// cat        5   1    0 |  6
/// dog        2   3    1 |  6
/// bird       1   0    2 |  3
/// predicted  8   4    3 | 15
/// ```
/// top-1 = (5 + 3 + 2) / 15 = 2/3.
/// cat:  P = 5/8, R = 5/6, F1 = 2·5 / (2·5 + 3 + 1) = 5/7
/// dog:  P = 3/4, R = 3/6, F1 = 2·3 / (2·3 + 1 + 3) = 3/5
/// bird: P = 2/3, R = 2/3, F1 = 2·2 / (2·2 + 1 + 1) = 2/3
/// macro F1 = (5/7 + 3/5 + 2/3) / 3 = 208/315.
fn three_class() -> ConfusionMatrix {
    let truth = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2];
    let pred = [0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 2, 0, 2, 2];
    ConfusionMatrix::from_predictions(names(&["cat", "dog", "bird"]), &truth, &pred)
}

#[test]
fn hand_computed_three_class_example() {
    let m = three_class();
    assert_eq!(m.counts, vec![vec![5, 1, 0], vec![2, 3, 1], vec![1, 0, 2]]);
    assert_eq!(m.total(), 15);
    assert_eq!(m.correct(), 10);
    assert_eq!(m.top1(), Some(10.0 / 15.0));

    let pc = m.per_class();
    assert_eq!(pc.len(), 3);
    let expect = [
        ("cat", 6, 5.0 / 8.0, 5.0 / 6.0, 5.0 / 7.0),
        ("dog", 6, 3.0 / 4.0, 3.0 / 6.0, 3.0 / 5.0),
        ("bird", 3, 2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0),
    ];
    for (got, (class, support, p, r, f1)) in pc.iter().zip(expect) {
        assert_eq!(got.class, class);
        assert_eq!(got.support, support, "{class} support");
        let gp = got.precision.expect("precision defined");
        let gr = got.recall.expect("recall defined");
        let gf = got.f1.expect("f1 defined");
        assert!((gp - p).abs() < 1e-12, "{class} precision {gp} != {p}");
        assert!((gr - r).abs() < 1e-12, "{class} recall {gr} != {r}");
        assert!((gf - f1).abs() < 1e-12, "{class} F1 {gf} != {f1}");
        // F1 is the harmonic mean of precision and recall.
        assert!((gf - 2.0 * gp * gr / (gp + gr)).abs() < 1e-12);
    }
    let macro_f1 = m.macro_f1().expect("macro F1 defined");
    assert!(
        (macro_f1 - 208.0 / 315.0).abs() < 1e-12,
        "macro F1 {macro_f1}"
    );
}

#[test]
fn add_counts_true_row_and_predicted_column() {
    let mut m = ConfusionMatrix::new(names(&["a", "b"]));
    m.add(0, 1);
    m.add(0, 1);
    m.add(1, 1);
    // counts[true][pred]: two samples of a predicted as b, one b predicted as b.
    assert_eq!(m.counts, vec![vec![0, 2], vec![0, 1]]);
    assert_eq!(m.top1(), Some(1.0 / 3.0));
}

#[test]
#[should_panic(expected = "out of range")]
fn add_rejects_an_index_past_the_classes() {
    let mut m = ConfusionMatrix::new(names(&["a", "b"]));
    m.add(0, 2);
}

#[test]
fn undefined_figures_are_none_not_zero_or_one() {
    // Class c neither occurs nor is predicted: all three figures undefined.
    let m = ConfusionMatrix::from_predictions(names(&["a", "b", "c"]), &[0, 0, 1], &[0, 1, 1]);
    let pc = m.per_class();
    assert_eq!(pc[2].support, 0);
    assert_eq!(pc[2].precision, None);
    assert_eq!(pc[2].recall, None);
    assert_eq!(pc[2].f1, None);
    // a: P = 1/1, R = 1/2, F1 = 2/3; b: P = 1/2, R = 1/1, F1 = 2/3.
    assert_eq!(pc[0].precision, Some(1.0));
    assert_eq!(pc[0].recall, Some(0.5));
    assert_eq!(pc[1].precision, Some(0.5));
    assert_eq!(pc[1].recall, Some(1.0));
    // Macro F1 averages the defined F1s only: (2/3 + 2/3) / 2, not (2/3 + 2/3 + 0) / 3.
    assert!((m.macro_f1().unwrap() - 2.0 / 3.0).abs() < 1e-12);
}

#[test]
fn a_class_never_predicted_has_no_precision_but_zero_f1() {
    // b has one sample, always predicted as a.
    let m = ConfusionMatrix::from_predictions(names(&["a", "b"]), &[0, 1], &[0, 0]);
    let pc = m.per_class();
    assert_eq!(pc[1].precision, None, "b was never predicted");
    assert_eq!(pc[1].recall, Some(0.0));
    assert_eq!(
        pc[1].f1,
        Some(0.0),
        "missed samples give F1 0, which counts in the macro mean"
    );
    // a: P = 1/2, R = 1, F1 = 2/3; macro = (2/3 + 0) / 2 = 1/3.
    assert!((m.macro_f1().unwrap() - 1.0 / 3.0).abs() < 1e-12);
}

#[test]
fn an_empty_evaluation_has_no_top1_and_no_macro_f1() {
    let m = ConfusionMatrix::new(names(&["a", "b"]));
    assert_eq!(m.total(), 0);
    assert_eq!(m.top1(), None);
    assert_eq!(m.macro_f1(), None);
    for c in m.per_class() {
        assert_eq!(
            (c.support, c.precision, c.recall, c.f1),
            (0, None, None, None)
        );
    }
    let report = EvalReport::new(m, None);
    assert_eq!(report.top1, None);
    assert_eq!(report.n, 0);
    let json = serde_json::to_value(&report).unwrap();
    assert!(
        json["top1"].is_null(),
        "empty set must serialise top1 as null, got {json}"
    );
}

#[test]
fn top_k_orders_by_descending_score_and_breaks_ties_by_lower_index() {
    let logits = [0.1, 0.5, 0.5, -1.0, 2.0];
    assert_eq!(top_k(&logits, 3), vec![(4, 2.0), (1, 0.5), (2, 0.5)]);
    assert_eq!(top_k(&logits, 1), vec![(4, 2.0)]);
    assert_eq!(top_k(&logits, 0), vec![]);
    // k past the length returns every class.
    let all = top_k(&logits, 10);
    assert_eq!(
        all.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![4, 1, 2, 0, 3]
    );
    // All equal: index order.
    assert_eq!(
        top_k(&[1.0; 4], 4).iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    // NaN never outranks a number.
    let with_nan = top_k(&[f32::NAN, -5.0, 1.0], 3);
    assert_eq!(
        with_nan.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![2, 1, 0]
    );
    assert!(top_k(&[], 3).is_empty());
}

#[test]
fn softmax_matches_reference_values_and_sums_to_one() {
    // Reference: torch.softmax(torch.tensor([1., 2., 3.]), 0)
    //   = [0.09003057, 0.24472847, 0.66524096]
    let p = softmax(&[1.0, 2.0, 3.0]);
    let want = [0.090_030_57, 0.244_728_47, 0.665_240_96];
    for (g, w) in p.iter().zip(want) {
        assert!((g - w).abs() < 1e-7, "{p:?}");
    }
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    // Shifting every logit leaves softmax unchanged.
    let q = softmax(&[101.0, 102.0, 103.0]);
    for (a, b) in p.iter().zip(&q) {
        assert!((a - b).abs() < 1e-7);
    }
}

#[test]
fn softmax_is_stable_for_large_logits() {
    // exp(1000) overflows f32 and f64; subtracting the max avoids it.
    assert_eq!(softmax(&[1000.0, 0.0]), vec![1.0, 0.0]);
    let p = softmax(&[1000.0, 1000.0]);
    assert_eq!(p, vec![0.5, 0.5]);
    let p = softmax(&[-1000.0, 0.0, -1000.0]);
    assert_eq!(p, vec![0.0, 1.0, 0.0]);
    // Masked (-inf) classes get probability 0.
    assert_eq!(softmax(&[f32::NEG_INFINITY, 0.0]), vec![0.0, 1.0]);
}

#[test]
fn softmax_of_undefined_input_is_nan_not_invented() {
    assert!(
        softmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY])
            .iter()
            .all(|x| x.is_nan())
    );
    assert!(softmax(&[f32::INFINITY, 0.0]).iter().all(|x| x.is_nan()));
    assert!(softmax(&[f32::NAN, 0.0]).iter().all(|x| x.is_nan()));
    assert!(softmax(&[]).is_empty());
}

/// Display width of the part of `line` before its `|`, counting CJK as two columns.
fn column_of_bar(line: &str) -> usize {
    let before = line.split('|').next().unwrap();
    before
        .chars()
        .map(|c| {
            if ('\u{4e00}'..='\u{9fff}').contains(&c) {
                2
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn to_text_keeps_unicode_names_whole_and_aligned() {
    let classes = names(&["красный", "red apple", "猫", "x"]);
    let truth = [0, 0, 1, 2, 3, 3];
    let pred = [0, 1, 1, 2, 3, 0];
    let m = ConfusionMatrix::from_predictions(classes.clone(), &truth, &pred);
    let text = m.to_text();
    println!("{text}");
    for c in &classes {
        assert!(text.contains(c.as_str()), "{c} missing from\n{text}");
    }
    // Row of "красный": index 0, counts 1 1 0 0, total 2.
    let row = text.lines().find(|l| l.contains("красный")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells, vec!["0", "красный", "1", "1", "0", "0", "|", "2"]);
    // Every table line puts its '|' in the same terminal column, CJK included.
    let bars: Vec<usize> = text
        .lines()
        .filter(|l| l.contains('|'))
        .map(column_of_bar)
        .collect();
    assert_eq!(bars.len(), 6, "header + 4 rows + totals");
    assert!(
        bars.windows(2).all(|w| w[0] == w[1]),
        "misaligned: {bars:?}\n{text}"
    );
    // Column totals: predicted a 2, b 2, 猫 1, x 1; total 6.
    let totals = text.lines().last().unwrap();
    assert!(totals.starts_with("predicted total"), "{totals}");
    let nums: Vec<&str> = totals.split_whitespace().skip(2).collect();
    assert_eq!(nums, vec!["2", "2", "1", "1", "|", "6"]);
}

#[test]
fn to_text_with_twelve_classes_stays_narrow() {
    let classes: Vec<String> = (0..12).map(|i| format!("category number {i}")).collect();
    let truth: Vec<usize> = (0..120).map(|i| i % 12).collect();
    let pred: Vec<usize> = (0..120)
        .map(|i| if i % 7 == 0 { (i + 1) % 12 } else { i % 12 })
        .collect();
    let m = ConfusionMatrix::from_predictions(classes.clone(), &truth, &pred);
    let text = m.to_text();
    println!("{text}");
    for c in &classes {
        assert!(text.contains(c.as_str()));
    }
    let widest = text.lines().map(|l| l.chars().count()).max().unwrap();
    // Names once per row, columns by index: 12 columns of 3 characters plus the label.
    assert!(widest <= 80, "table {widest} columns wide:\n{text}");
}

#[test]
fn report_text_shows_percentages_and_dashes_for_undefined() {
    let m = ConfusionMatrix::from_predictions(names(&["a", "b", "c"]), &[0, 0, 1], &[0, 1, 1]);
    let report = EvalReport::new(m, Some(0.5));
    assert_eq!(report.n, 3);
    let text = report.to_text();
    println!("{text}");
    // The top-1 with its 95% Wilson interval (2 of 3: 20.8-93.9%), then the warning that 3
    // images are too few to tell, on its own line after the summary.
    assert!(
        text.starts_with(
            "3 samples, top-1 66.7% (95% interval 20.8-93.9%), macro F1 66.7%, loss 0.5000\nwarning: 3 held-out images are too few to tell"
        ),
        "{text}"
    );
    let row_c = text.lines().find(|l| l.starts_with("2 c")).unwrap();
    assert_eq!(
        row_c.split_whitespace().collect::<Vec<_>>(),
        vec!["2", "c", "0", "-", "-", "-"]
    );
    let row_a = text.lines().find(|l| l.starts_with("0 a")).unwrap();
    assert_eq!(
        row_a.split_whitespace().collect::<Vec<_>>(),
        vec!["0", "a", "2", "100.0%", "50.0%", "66.7%"]
    );
}

#[test]
fn json_round_trips_and_rejects_a_non_square_matrix() {
    let report = EvalReport::new(three_class(), Some(0.731));
    let json = serde_json::to_string(&report).unwrap();
    let back: EvalReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["confusion"]["counts"][1], serde_json::json!([2, 3, 1]));
    assert_eq!(v["per_class"][0]["class"], "cat");

    let bad = r#"{"classes": ["a", "b"], "counts": [[1, 2], [3]]}"#;
    let err = serde_json::from_str::<ConfusionMatrix>(bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("row 1 has 1 counts, expected 2"), "{err}");
    let bad = r#"{"classes": ["a", "b"], "counts": [[1, 2]]}"#;
    let err = serde_json::from_str::<ConfusionMatrix>(bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 classes but 1 rows"), "{err}");
}

#[test]
fn write_json_is_atomic_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eval.json");
    let report = EvalReport::new(three_class(), None);
    report.write_json(&path).unwrap();
    let back: EvalReport = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(back, report);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "scratch file left behind"
    );
}

/// Pixels exactly equal to `rgb`.
fn count_color(img: &image::RgbImage, rgb: [u8; 3]) -> usize {
    img.pixels().filter(|p| p.0 == rgb).count()
}

fn decode(path: &Path) -> image::RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// Darkest ColorBrewer "Blues" stop, the fill of a cell holding its whole row.
const DARKEST: [u8; 3] = [0x08, 0x30, 0x6b];

#[test]
fn write_png_two_classes_decodes_at_the_expected_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confusion.png");
    // cat: 10 of 10 right (a dark diagonal cell); dog: 6 right, 4 taken for cat.
    let mut truth = vec![0; 10];
    truth.extend([1; 10]);
    let mut pred = vec![0; 10];
    pred.extend([1, 1, 1, 1, 1, 1, 0, 0, 0, 0]);
    let m = ConfusionMatrix::from_predictions(names(&["cat", "dog"]), &truth, &pred);
    m.write_png(&path, "cats vs dogs — validation").unwrap();

    let img = decode(&path);
    let (w, h) = img.dimensions();
    assert!(
        (300..=700).contains(&w) && (250..=600).contains(&h),
        "{w}x{h}"
    );
    // Exactly one cell (cat -> cat, share 1) is filled with the darkest colour: a 96 px cell
    // minus its grid lines and the digits drawn on it.
    let dark = count_color(&img, DARKEST);
    assert!((5000..=96 * 96).contains(&dark), "{dark} darkest pixels");
    // White counts on the dark cell and dark text elsewhere: text was rendered.
    assert!(count_color(&img, [33, 33, 33]) > 200, "no text drawn");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "scratch file left behind"
    );
    if let Ok(keep) = std::env::var("NANOCLASS_KEEP_PNG") {
        std::fs::copy(&path, Path::new(&keep).join("confusion_2.png")).unwrap();
    }
}

#[test]
fn write_png_twelve_unicode_classes_decodes_at_the_expected_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confusion.png");
    let classes = names(&[
        "red apple",
        "green apple",
        "красный",
        "зелёный",
        "猫",
        "thumbs up",
        "thumbs down",
        "a rather long category name for the axis",
        "background",
        "Ω omega",
        "dog",
        "empty class",
    ]);
    let mut truth = Vec::new();
    let mut pred = Vec::new();
    for t in 0..11 {
        for k in 0..(8 + 3 * t) {
            truth.push(t);
            pred.push(if k % 5 == 4 { (t + 1 + k % 3) % 12 } else { t });
        }
    }
    let m = ConfusionMatrix::from_predictions(classes, &truth, &pred);
    assert_eq!(m.per_class()[11].recall, None);
    m.write_png(&path, "nanoclass eval: 12 classes").unwrap();
    let img = decode(&path);
    let (w, h) = img.dimensions();
    assert!(
        (800..=1400).contains(&w) && (800..=1400).contains(&h),
        "{w}x{h}"
    );
    // The empty class's row is grey (no shares to colour): 12 cells of ~60x60.
    assert!(count_color(&img, [225, 225, 225]) > 12 * 50 * 50);
    if let Ok(keep) = std::env::var("NANOCLASS_KEEP_PNG") {
        std::fs::copy(&path, Path::new(&keep).join("confusion_12.png")).unwrap();
    }
}

#[test]
fn write_png_handles_an_empty_matrix_and_many_classes() {
    let dir = tempfile::tempdir().unwrap();
    let empty = ConfusionMatrix::new(names(&["a", "b"]));
    empty
        .write_png(&dir.path().join("empty.png"), "empty")
        .unwrap();
    decode(&dir.path().join("empty.png"));

    let none = ConfusionMatrix::new(Vec::new());
    none.write_png(&dir.path().join("none.png"), "no classes")
        .unwrap();
    decode(&dir.path().join("none.png"));

    let classes: Vec<String> = (0..150).map(|i| format!("c{i}")).collect();
    let idx: Vec<usize> = (0..600).map(|i| i % 150).collect();
    let many = ConfusionMatrix::from_predictions(classes, &idx, &idx);
    many.write_png(&dir.path().join("many.png"), "150 classes")
        .unwrap();
    let (w, h) = decode(&dir.path().join("many.png")).dimensions();
    assert!(w <= 3000 && h <= 3000, "{w}x{h}");
}

#[test]
fn write_png_into_a_missing_folder_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("confusion.png");
    let err = three_class().write_png(&path, "x").unwrap_err().to_string();
    assert!(err.contains("no-such-dir/confusion.png"), "{err}");
}
