//! The leave-out check of the instant preview, kept off the upload path: when it runs, what it
//! answers, and the job that runs it in the background.

use nanoclass::instant::{Features, HeadChoice, HeadKind, InstantModel, LeaveOut};

/// Up to this many images, every refit runs the leave-out check itself; beyond, the check runs
/// in the background. Its cost grows with the square of the images up to
/// [`nanoclass::instant::MAX_FIT_IMAGES`]: at 64 images it is a sixteenth of the cost at the cap.
pub const SYNC_CHECK_IMAGES: usize = 64;

/// Relative change of the number of images after which the leave-out check runs again: a
/// quarter more, or a quarter fewer, than when it last ran.
pub const CHECK_GROWTH: f64 = 0.25;

/// The last leave-out check's answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Checked {
    pub(super) images: usize,
    pub(super) classes: usize,
    pub(super) kind: HeadKind,
    pub(super) leave_out: Option<LeaveOut>,
}

impl Checked {
    /// Whether the check still speaks for `images` images of `classes` classes.
    pub(super) fn holds_for(&self, images: usize, classes: usize) -> bool {
        let ratio = images as f64 / self.images.max(1) as f64;
        self.classes == classes && (1.0 - CHECK_GROWTH..=1.0 + CHECK_GROWTH).contains(&ratio)
    }
}

/// A leave-out check to run off the request: the rows of one refit.
pub(super) struct CheckJob {
    pub(super) x: Vec<f32>,
    pub(super) y: Vec<usize>,
    pub(super) dim: usize,
    pub(super) split: Option<usize>,
    pub(super) classes: usize,
    pub(super) centre: Option<Vec<f32>>,
    pub(super) version: u64,
}

impl CheckJob {
    pub(super) fn run(&self) -> nanoclass::Result<InstantModel> {
        let data = Features {
            x: &self.x,
            split: self.split,
            labels: &self.y,
            dim: self.dim,
            classes: self.classes,
        };
        InstantModel::fit(data, self.centre.as_deref(), HeadChoice::Auto)
    }
}

pub(super) fn choice_of(kind: HeadKind) -> HeadChoice {
    match kind {
        HeadKind::Prototypes => HeadChoice::Prototypes,
        HeadKind::Linear => HeadChoice::Linear,
    }
}
