//! Reading a dataset's folders: sorted entries, ignored names with their reasons, images per class and per split, samples with their labels (and points).

use super::*;

/// A visible entry of a directory.
pub(super) struct Entry {
    /// The name, lossily converted when it is not UTF-8 (only class folder names must be UTF-8,
    /// see `utf8_name`).
    pub(super) name: String,
    /// False when `name` is a lossy conversion.
    pub(super) name_is_utf8: bool,
    pub(super) path: PathBuf,
    pub(super) is_dir: bool,
}

impl Entry {
    /// The exact name as a class name: UTF-8 or an error naming the folder.
    pub(super) fn utf8_name(&self, root: &Path) -> Result<String> {
        if self.name_is_utf8 {
            return Ok(self.name.clone());
        }
        let shown = self
            .path
            .strip_prefix(root)
            .unwrap_or(&self.path)
            .display()
            .to_string();
        Err(dataset_error(
            root,
            format!("the class folder name {shown} is not valid UTF-8; rename it"),
        ))
    }
}

/// Why an entry is skipped, if it is.
pub(super) fn ignore_reason(name: &str) -> Option<&'static str> {
    if name == "__MACOSX" {
        Some("macOS archive metadata")
    } else if name.starts_with('.') {
        Some("hidden")
    } else {
        None
    }
}

/// An ignored entry: `(name, is_dir, why)`.
pub(super) type Ignored = (String, bool, &'static str);

/// Lists a directory, sorted by name (byte order), without hidden entries; hidden ones and
/// `__MACOSX` are returned separately.
pub(super) fn read_dir_sorted(dir: &Path) -> Result<(Vec<Entry>, Vec<Ignored>)> {
    let read = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut visible = Vec::new();
    let mut ignored = Vec::new();
    for item in read {
        let item = item.map_err(|e| Error::io(dir, e))?;
        let path = item.path();
        // Follow symbolic links, like torchvision (os.walk(followlinks=True)).
        let is_dir = match fs::metadata(&path) {
            Ok(meta) => meta.is_dir(),
            Err(_) => false, // a dangling link: treated as a file, then ignored unless an image
        };
        let os_name = item.file_name();
        let name_is_utf8 = os_name.to_str().is_some();
        let name = os_name.to_string_lossy().into_owned();
        match ignore_reason(&name) {
            Some(why) => ignored.push((name, is_dir, why)),
            None => visible.push(Entry {
                name,
                name_is_utf8,
                path,
                is_dir,
            }),
        }
    }
    // Byte order of the names (file names in byte order; a non-UTF-8 name sorts by its bytes).
    visible.sort_by(|a, b| a.path.file_name().cmp(&b.path.file_name()));
    ignored.sort();
    Ok((visible, ignored))
}

/// The images below a class folder, recursively, sorted by path; counts ignored files.
pub(super) fn collect_images(
    dir: &Path,
    seen: &mut BTreeSet<PathBuf>,
    images: &mut Vec<PathBuf>,
    ignored_files: &mut usize,
) -> Result<()> {
    if let Ok(real) = fs::canonicalize(dir)
        && !seen.insert(real)
    {
        return Ok(()); // a symbolic-link cycle or a second link to the same folder
    }
    let (visible, ignored) = read_dir_sorted(dir)?;
    *ignored_files += ignored.len();
    for entry in visible {
        if entry.is_dir {
            collect_images(&entry.path, seen, images, ignored_files)?;
        } else if is_image_extension(&entry.path) {
            images.push(entry.path);
        } else {
            *ignored_files += 1;
        }
    }
    Ok(())
}

/// The class folders of one split (or of the root in layout 2) and their images.
pub(super) struct SplitScan {
    /// Class folder names, sorted.
    pub(super) classes: Vec<String>,
    /// Images per class folder, in the order of `classes`.
    pub(super) images: Vec<Vec<PathBuf>>,
}

pub(super) fn scan_split(
    root: &Path,
    dir: &Path,
    prefix: &str,
    warnings: &mut Vec<String>,
) -> Result<SplitScan> {
    let (visible, ignored) = read_dir_sorted(dir)?;
    for (name, is_dir, why) in &ignored {
        if *is_dir {
            warnings.push(format!("ignored {why} folder {prefix}{name}"));
        }
    }
    // Hidden files beside the class folders are not counted: only files a class could own are.
    let mut ignored_files = 0;
    let mut classes = Vec::new();
    let mut images = Vec::new();
    for entry in visible {
        if !entry.is_dir {
            // Plain files beside the class folders (SHA256SUMS, SOURCE.md, a stray image) are
            // not samples: a sample's class is its folder.
            continue;
        }
        let mut found = Vec::new();
        let mut seen = BTreeSet::new();
        collect_images(&entry.path, &mut seen, &mut found, &mut ignored_files)?;
        classes.push(entry.utf8_name(root)?);
        images.push(found);
    }
    if ignored_files > 0 {
        let place = if prefix.is_empty() {
            "the class folders"
        } else {
            prefix
        };
        warnings.push(format!(
            "ignored {ignored_files} hidden or non-image file(s) in {place} (only .{} files are \
             read)",
            crate::data::decode::IMAGE_EXTENSIONS.join(", .")
        ));
    }
    Ok(SplitScan { classes, images })
}

/// Turns a split scan into samples, parsing points in regression mode.
pub(super) fn to_samples(root: &Path, split: SplitScan, mode: Mode) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    let mut bad = Vec::new();
    for (label, paths) in split.images.into_iter().enumerate() {
        for path in paths {
            let point = match mode {
                Mode::Classification => None,
                Mode::Regression => match parse_dli_point(&path) {
                    Ok(p) => Some(p),
                    Err(Error::Dataset { path, reason }) => {
                        bad.push(format!("{}: {reason}", path.display()));
                        continue;
                    }
                    Err(other) => return Err(other),
                },
            };
            samples.push(Sample { path, label, point });
        }
    }
    if !bad.is_empty() {
        const SHOWN: usize = 10;
        let more = bad.len().saturating_sub(SHOWN);
        let mut names = bad[..bad.len().min(SHOWN)].join("\n  ");
        if more > 0 {
            names.push_str(&format!("\n  ... and {more} more"));
        }
        return Err(dataset_error(
            root,
            format!(
                "{} image file name(s) do not carry a point:\n  {names}",
                bad.len()
            ),
        ));
    }
    Ok(samples)
}
