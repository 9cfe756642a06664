//! Category names as folder names.
//!
//! A category (class) is stored as one folder of an ImageFolder dataset, `DATA/<category>/`, so
//! its name must be a single, ordinary path component on every system the dataset may be copied
//! to. Unicode letters, digits, spaces and punctuation are fine (`"café au lait"`, `"蜂"`).

use crate::{Error, Result};

/// The longest accepted name, in bytes of UTF-8: the usual file-name limit (`NAME_MAX`) of ext4,
/// XFS, btrfs and APFS.
pub const MAX_CATEGORY_NAME_BYTES: usize = 255;

/// Checks that `name` can be used as a category, i.e. as one folder name under the dataset root.
///
/// Rejected, each with a message that quotes the name and says why:
/// - the empty name, and names that are only spaces;
/// - names with `/` or `\` (they would make nested folders, or do on Windows);
/// - `.` and `..` and every name made only of dots (the current / parent folder, or invisible on
///   some systems);
/// - names starting with `.` (hidden folders, which the dataset scanner skips, so the images
///   would never be trained on);
/// - control characters (U+0000..U+001F, U+007F..U+009F: newlines, tabs, NUL, ...);
/// - leading or trailing spaces (invisible in listings, and stripped by some file managers);
/// - names longer than [`MAX_CATEGORY_NAME_BYTES`] bytes.
///
/// # Errors
/// [`Error::Other`] naming the category and the reason.
pub fn validate_category_name(name: &str) -> Result<()> {
    validate_folder_name("category", name)
}

/// Checks a name that becomes one folder name (a category, a studio task) with the rules of
/// [`validate_category_name`]; errors speak of `what` (`"task"`, `"category"`).
///
/// # Errors
/// [`Error::Other`] naming `what`, the name and the rule it breaks.
pub fn validate_folder_name(what: &str, name: &str) -> Result<()> {
    let fail = |reason: &str| Err(Error::Other(format!("{what} name {name:?}: {reason}")));
    if name.trim().is_empty() {
        return fail("is empty");
    }
    if name.contains('/') || name.contains('\\') {
        return fail(&format!(
            "contains a path separator ('/' or '\\'); a {what} is one folder name"
        ));
    }
    if name.chars().all(|c| c == '.') {
        return fail("is only dots ('.' and '..' name the current and parent folders)");
    }
    if name.starts_with('.') {
        return fail("starts with '.', which makes a hidden folder the dataset scan skips");
    }
    if name.chars().any(char::is_control) {
        return fail("contains a control character (newline, tab, NUL, ...)");
    }
    if name != name.trim() {
        return fail("starts or ends with whitespace");
    }
    if name.len() > MAX_CATEGORY_NAME_BYTES {
        return fail(&format!(
            "is {} bytes long; folder names are limited to {MAX_CATEGORY_NAME_BYTES}",
            name.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_and_unicode_names_pass() {
        for ok in [
            "ants",
            "thumbs up",
            "café au lait",
            "蜂",
            "a.b",
            "x..y",
            "10",
            "A-B_c (2)",
        ] {
            validate_category_name(ok).unwrap_or_else(|e| panic!("{ok:?} rejected: {e}"));
        }
    }

    #[test]
    fn names_that_are_not_one_plain_folder_are_rejected_with_the_reason() {
        let cases = [
            ("", "empty"),
            ("   ", "empty"),
            ("a/b", "separator"),
            ("a\\b", "separator"),
            (".", "only dots"),
            ("..", "only dots"),
            ("...", "only dots"),
            (".hidden", "hidden"),
            ("line\nbreak", "control"),
            ("tab\there", "control"),
            ("nul\0", "control"),
            (" ants", "whitespace"),
            ("ants ", "whitespace"),
        ];
        for (name, why) in cases {
            let err = validate_category_name(name).unwrap_err().to_string();
            assert!(err.contains(why), "{name:?}: {err}");
            assert!(err.contains(&format!("{name:?}")), "{name:?}: {err}");
        }
        let long = "é".repeat(128);
        assert!(
            validate_category_name(&long)
                .unwrap_err()
                .to_string()
                .contains("256 bytes")
        );
    }
}
