//! `nanoclass capture`: save frames from a camera, a folder of images or a video file into
//! `DATA/<category>/` of an ImageFolder dataset.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use nanoclass::camera::{self, CaptureOptions};
use nanoclass::data::category::validate_category_name;

/// Flags of `nanoclass capture`.
#[derive(Args, Debug)]
pub struct CaptureArgs {
    /// The source: `v4l2:///dev/video0` or `/dev/video0` (options `?width=640&height=480&fps=30
    /// &format=mjpeg|yuyv`), a folder of images or a video file, as a path or `file://` URI
    /// (options `?fps=N&loop=0`).
    #[arg(long, required_unless_present = "list_devices")]
    source: Option<String>,
    /// The category (class) name: the folder the frames go to, `DATA/<category>/`.
    #[arg(long, required_unless_present = "list_devices")]
    category: Option<String>,
    /// The dataset root folder (created when missing).
    #[arg(long, required_unless_present = "list_devices")]
    out: Option<PathBuf>,
    /// How many frames to save.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Seconds between two saved frames (0: back to back).
    #[arg(long, default_value_t = 0.0)]
    interval: f64,
    /// Regression datasets: the target point X,Y in pixels of the saved image; files are named
    /// `<x>_<y>_<uuid>.jpg` as in the DLI course.
    #[arg(long, value_name = "X,Y", value_parser = parse_point)]
    point: Option<(u32, u32)>,
    /// Print the V4L2 capture devices (path, card, driver, formats) and exit.
    #[arg(long)]
    list_devices: bool,
}

/// `X,Y` as two non-negative integer pixel coordinates.
fn parse_point(s: &str) -> std::result::Result<(u32, u32), String> {
    let err = || format!("{s:?} is not X,Y with two non-negative integers (pixels), e.g. 320,240");
    let (x, y) = s.split_once(',').ok_or_else(err)?;
    Ok((
        x.trim().parse().map_err(|_| err())?,
        y.trim().parse().map_err(|_| err())?,
    ))
}

/// Runs `nanoclass capture`.
pub fn run(a: CaptureArgs) -> Result<ExitCode> {
    if a.list_devices {
        let devices = camera::list_devices();
        if devices.is_empty() {
            eprintln!("no V4L2 capture device found");
        }
        for d in devices {
            println!(
                "{}\t{}\t{}\t{}",
                d.uri,
                d.card,
                d.driver,
                d.formats.join(",")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(source), Some(category), Some(out)) = (a.source, a.category, a.out) else {
        bail!("--source, --category and --out are required");
    };
    validate_category_name(&category)?;
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    if !(a.interval.is_finite() && a.interval >= 0.0) {
        bail!("--interval {} must be a number of seconds >= 0", a.interval);
    }
    let mut src = camera::open(&source)?;
    eprintln!("capturing from {}", src.describe());
    let opts = CaptureOptions {
        out,
        category: category.clone(),
        count: a.count,
        interval: Duration::from_secs_f64(a.interval),
        point: a.point,
    };
    let summary = camera::capture(&mut *src, &opts, &mut |saved| {
        println!("{}", saved.path.display());
    })
    .with_context(|| format!("capturing category {category:?}"))?;
    let dropped = match summary.dropped {
        0 => String::new(),
        1 => ", 1 bad frame dropped".to_owned(),
        n => format!(", {n} bad frames dropped"),
    };
    eprintln!(
        "saved {} image{} to {} in {:.1} s{dropped}",
        summary.saved.len(),
        if summary.saved.len() == 1 { "" } else { "s" },
        summary.dir.display(),
        summary.elapsed.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_as_integer_pixels() {
        assert_eq!(parse_point("320,240"), Ok((320, 240)));
        assert_eq!(parse_point(" 3 , 4 "), Ok((3, 4)));
        for bad in ["320", "-1,2", "1.5,2", "a,b", "1,2,3"] {
            assert!(parse_point(bad).is_err(), "{bad}");
        }
    }
}
