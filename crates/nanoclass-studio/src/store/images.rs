//! A category's images: listing, saving (with points for regression tasks), moving a point,
//! deleting.

use super::*;

impl Store {
    /// The images of a category, oldest first: classification names are time-ordered; regression
    /// names start with the point, so they are ordered by modification time (a point
    /// correction renames the file and keeps its time), then name. Regression images carry
    /// their point and size.
    pub fn list_images(&self, task: &str, category: &str) -> ApiResult<Vec<ImageInfo>> {
        let dir = self.category_dir(task, category)?;
        let regression = self.task_meta(task)?.kind == TaskKind::Regression;
        let mut out = Vec::new();
        for p in image_files(&dir)? {
            let meta = std::fs::metadata(&p).map_err(|e| io_err(&p, e))?;
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (point, size) = if regression {
                let point = parse_dli_point(&p).ok().map(|[x, y]| [x as u32, y as u32]);
                let size = image::image_dimensions(&p).ok().map(|(w, h)| [w, h]);
                (point, size)
            } else {
                (None, None)
            };
            out.push((
                meta.modified().ok(),
                ImageInfo {
                    name,
                    bytes: meta.len(),
                    point,
                    size,
                },
            ));
        }
        if regression {
            out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
        }
        Ok(out.into_iter().map(|(_, i)| i).collect())
    }

    /// The path of a stored image, after checking that `name` is a plain image file name in
    /// the category folder; 400 for a name with separators, 404 when missing.
    pub fn image_path(&self, task: &str, category: &str, name: &str) -> ApiResult<PathBuf> {
        let dir = self.category_dir(task, category)?;
        if name.is_empty()
            || name.contains('/')
            || name.contains('\\')
            || name.starts_with('.')
            || name.chars().any(char::is_control)
        {
            return Err(ApiError::bad_request(format!(
                "image name {name:?}: not a plain file name"
            )));
        }
        let path = dir.join(name);
        if !is_image_extension(&path) || !path.is_file() {
            return Err(ApiError::not_found(format!(
                "category {category:?} of task {task:?} has no image {name:?}"
            )));
        }
        Ok(path)
    }

    /// Writes an image's encoded bytes into a category (temporary file, then rename): a camera
    /// capture as `<unix ms>-<n>.<ext>`, whose name carries the capture time that keeps a burst
    /// together on one side of the held-out split ([`nanoclass::data::groups`]); an uploaded or
    /// imported file as `<unix ms>-<n>-file.<ext>`, whose save time says nothing of when it
    /// was taken (its near-copies are found by appearance). The caller has checked that the
    /// bytes decode. Returns the file name.
    pub fn save_image(
        &self,
        task: &str,
        category: &str,
        bytes: &[u8],
        ext: &str,
        from: Saved,
    ) -> ApiResult<String> {
        let dir = self.category_dir(task, category)?;
        let name = match from {
            Saved::Capture => format!("{}.{ext}", unique_stem()),
            Saved::File => format!("{}-file.{ext}", unique_stem()),
        };
        write_atomic(&dir.join(&name), bytes)?;
        Ok(name)
    }

    /// Writes an image with its point into a regression category as `<x>_<y>_<uuid>.<ext>`
    /// (the DLI course layout; a random UUID v4), through a temporary file and a rename. The
    /// caller has checked that the bytes decode and that the point lies in the image. Returns
    /// the file name.
    pub fn save_point_image(
        &self,
        task: &str,
        category: &str,
        bytes: &[u8],
        ext: &str,
        point: [u32; 2],
    ) -> ApiResult<String> {
        let dir = self.category_dir(task, category)?;
        let name = point_name(point, &uuid::Uuid::new_v4().to_string(), ext);
        write_atomic(&dir.join(&name), bytes)?;
        Ok(name)
    }

    /// Moves a regression image's point: renames `<x>_<y>_<uuid>.<ext>` to the new
    /// `<x'>_<y'>_<uuid>.<ext>` (one `rename` in the same folder: atomic, the bytes are not
    /// rewritten). The caller has checked that the point lies in the image. Returns the new
    /// name; the same name when the point did not change.
    ///
    /// # Errors
    /// 400 when `name` is not a `<x>_<y>_<uuid>` name; 404 when it is missing; 409 when the new
    /// name is taken.
    pub fn move_point(
        &self,
        task: &str,
        category: &str,
        name: &str,
        point: [u32; 2],
    ) -> ApiResult<String> {
        let path = self.image_path(task, category, name)?;
        let (_, uuid, ext) = split_point_name(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "image {name:?}: not a <x>_<y>_<uuid>.jpg name, so it has no point to move"
            ))
        })?;
        let new = point_name(point, uuid, ext);
        if new == name {
            return Ok(new);
        }
        let to = path.with_file_name(&new);
        if to.exists() {
            return Err(ApiError::conflict(format!(
                "image {name:?}: cannot rename to {new:?}, which exists"
            )));
        }
        std::fs::rename(&path, &to).map_err(|e| io_err(&path, e))?;
        Ok(new)
    }

    /// Moves an image to the task's `trash/`.
    pub fn delete_image(&self, task: &str, category: &str, name: &str) -> ApiResult<()> {
        let path = self.image_path(task, category, name)?;
        let to = self
            .trash_dir(task)?
            .join(format!("{}-{category}-{name}", unique_stem()));
        std::fs::rename(&path, &to).map_err(|e| io_err(&path, e))
    }
}
