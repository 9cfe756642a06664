//! `labels.txt`: the class names of a model, one per line, index = line number (from 0), UTF-8.
//!
//! The format jetson-inference's `imagenet` reads. Reading is forgiving about what editors add
//! (a UTF-8 byte-order mark, CRLF line ends, surrounding spaces, blank lines); writing refuses a
//! name that would not read back as itself.

use std::path::Path;

use crate::{Error, Result};

/// Parses the text of a labels file: strips a leading UTF-8 byte-order mark (U+FEFF), splits
/// lines (LF or CRLF), trims surrounding whitespace (including a lone CR) from each line and
/// drops blank lines. Names keep their inner spaces (`red apple` is one label).
pub fn parse_labels(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Reads a labels file, see [`parse_labels`].
///
/// # Errors
/// [`Error::Io`] when it cannot be read; [`Error::Labels`] when it is not UTF-8 or holds no name.
pub fn read_labels(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let fail = |reason: String| Error::Labels {
        path: path.to_path_buf(),
        reason,
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let labels = parse_labels(&text);
    if labels.is_empty() {
        return Err(fail(
            "no label in the file (one class name per line is expected)".to_owned(),
        ));
    }
    Ok(labels)
}

/// Writes `labels` one per line (LF, no byte-order mark), atomically: the text goes to a
/// temporary file in the same folder, which is synced and then renamed over `path`, so a reader
/// never sees half a file.
///
/// # Errors
/// [`Error::Labels`] when a name is empty, has surrounding whitespace or contains a line break
/// (it would not read back as itself), [`Error::Io`] when writing fails.
pub fn write_labels(path: &Path, labels: &[String]) -> Result<()> {
    for (i, label) in labels.iter().enumerate() {
        let problem = if label.is_empty() {
            Some("is empty")
        } else if label.contains(['\n', '\r']) {
            Some("contains a line break")
        } else if label.trim() != label || label.starts_with('\u{FEFF}') {
            Some("starts or ends with whitespace")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::Labels {
                path: path.to_path_buf(),
                reason: format!(
                    "label {i} ({label:?}) {problem}; it would not read back as itself"
                ),
            });
        }
    }
    let mut text = labels.join("\n");
    text.push('\n');
    crate::fs::write_atomic(path, text.as_bytes())
}

/// Checks that the number of labels equals the number of model outputs (logits).
///
/// # Errors
/// [`Error::Labels`] stating both numbers: `3 labels [a, b, c], but the model has 2 outputs`.
pub fn check_label_count(path: &Path, labels: &[String], outputs: usize) -> Result<()> {
    if labels.len() == outputs {
        return Ok(());
    }
    Err(Error::Labels {
        path: path.to_path_buf(),
        reason: format!(
            "{} labels [{}], but the model has {} outputs; labels.txt must list one class name \
             per output",
            labels.len(),
            labels.join(", "),
            outputs
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rules() {
        assert_eq!(parse_labels("a\nb\n\n"), vec!["a", "b"]);
        assert_eq!(parse_labels("a\r\nb\r\n"), vec!["a", "b"]);
        assert_eq!(
            parse_labels("\u{FEFF}red apple\n  日本 \n\n\nкрасный"),
            vec!["red apple", "日本", "красный"]
        );
        assert!(parse_labels("").is_empty());
    }

    #[test]
    fn write_refuses_names_that_do_not_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("labels.txt");
        for bad in ["", " a", "a\nb", "b\r"] {
            let err = write_labels(&path, &["ok".to_owned(), bad.to_owned()]).unwrap_err();
            assert!(err.to_string().contains("label 1"), "{err}");
        }
        assert!(!path.exists());
    }

    #[test]
    fn write_then_read_and_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("labels.txt");
        let labels: Vec<String> = ["a", "b c"].map(String::from).to_vec();
        write_labels(&path, &labels).expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "a\nb c\n");
        write_labels(&path, &labels[..1]).expect("overwrite");
        assert_eq!(read_labels(&path).expect("read"), vec!["a"]);
        // Only labels.txt is left: the temporary file was renamed, not copied.
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }

    #[test]
    fn count_mismatch_names_both_numbers() {
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let err = check_label_count(Path::new("run/labels.txt"), &labels, 2)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "labels run/labels.txt: 3 labels [a, b, c], but the model has 2 outputs; labels.txt \
             must list one class name per output"
        );
        assert!(check_label_count(Path::new("l.txt"), &labels, 3).is_ok());
    }
}
