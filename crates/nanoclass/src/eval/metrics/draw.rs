//! The confusion matrix as a PNG heat map: layout, text in the embedded DejaVu Sans, and
//! the drawing itself.

use super::*;

impl ConfusionMatrix {
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
    pub(super) fn render_rgb(
        &self,
        title: &str,
    ) -> std::result::Result<(u32, u32, Vec<u8>), String> {
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
    pub(super) fn draw<DB: DrawingBackend>(
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

/// DejaVu Sans 2.37 (Bitstream Vera licence + public-domain DejaVu changes, see
/// `assets/fonts/LICENSE-DejaVu.txt`), compiled in so rendering needs no system font.
pub(super) static DEJAVU_SANS: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
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
pub(super) const MARGIN: i32 = 16;
/// Title font size, px (plotters/ab_glyph "px scale": ascender-to-descender height).
pub(super) const TITLE_PX: i32 = 22;
/// Summary-line font size, px.
pub(super) const SUBTITLE_PX: i32 = 15;
/// Axis-title font size, px.
pub(super) const AXIS_PX: i32 = 16;
/// Largest class-name font size, px.
pub(super) const LABEL_PX: i32 = 15;
/// Colour-bar label font size, px.
pub(super) const BAR_PX: i32 = 13;
/// Gap between the matrix and the colour bar, and the bar's width, px.
pub(super) const BAR_GAP: i32 = 16;
pub(super) const BAR_W: i32 = 14;
/// Smallest font size worth drawing, px; below it counts / names are left out.
pub(super) const MIN_TEXT_PX: i32 = 7;
/// Class names longer than this many characters are shortened with `…` in the PNG.
pub(super) const MAX_NAME_CHARS: usize = 32;

pub(super) const TEXT: RGBColor = RGBColor(33, 33, 33);
pub(super) const MUTED: RGBColor = RGBColor(90, 90, 90);
pub(super) const GRID: RGBColor = RGBColor(200, 200, 200);
/// Fill of rows whose class has no samples (shares undefined).
pub(super) const NO_SAMPLES: RGBColor = RGBColor(225, 225, 225);

/// ColorBrewer "Blues" (9 classes, Cynthia Brewer; the stops of matplotlib's `Blues`), from
/// `#f7fbff` (share 0) to `#08306b` (share 1).
pub(super) const BLUES: [(u8, u8, u8); 9] = [
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
pub(super) fn blues(share: f64) -> RGBColor {
    let s = share.clamp(0.0, 1.0) * (BLUES.len() - 1) as f64;
    let i = (s.floor() as usize).min(BLUES.len() - 2);
    let f = s - i as f64;
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * f).round() as u8;
    let (a, b) = (BLUES[i], BLUES[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// One glyph of a laid-out line: the character and the offset, in px along the line from its
/// start, at which plotters must place the glyph's pixel box.
pub(super) struct PlacedGlyph {
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
pub(super) fn layout_line(
    text: &str,
    px: i32,
) -> std::result::Result<(Vec<PlacedGlyph>, f32), String> {
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
pub(super) fn text_width(text: &str, px: i32) -> std::result::Result<i32, String> {
    Ok(layout_line(text, px)?.1.ceil() as i32)
}

/// Draws `text` with its horizontal anchor `h` at `at.0` and its capitals vertically centred on
/// `at.1`. With [`FontTransform::Rotate270`] the line reads bottom-to-top and the same rules
/// apply along the rotated axes (anchor on `at.1`, capitals centred on `at.0`).
///
/// plotters' ab_glyph backend puts the baseline `px / 2` below the point it is given; DejaVu's
/// capital height is 0.63 of the px scale (ascender-to-descender height), so the capitals'
/// centre lies `0.19·px` below that point, which is the correction applied here.
pub(super) fn draw_label<DB: DrawingBackend>(
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
pub(super) fn shorten(name: &str) -> String {
    if name.chars().count() <= MAX_NAME_CHARS {
        name.to_string()
    } else {
        let head: String = name.chars().take(MAX_NAME_CHARS - 1).collect();
        format!("{head}…")
    }
}

/// Geometry of the heat map, in px.
pub(super) struct Layout {
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
