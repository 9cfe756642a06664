//! The instant preview's refits: when the leave-out check runs with the refit, when it runs in
//! the background, and what its answer changes.

use super::*;

/// `per` images per class of 3 classes: 16 features, class `c` around 3 on feature `c`, with
/// a deterministic spread; the listing names them `c/i.jpg`.
fn fill(s: &mut TaskState, per: usize) -> Vec<(PathBuf, usize)> {
    let mut state = 7u64;
    let mut rnd = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    s.labels = vec!["a".into(), "b".into(), "c".into()];
    s.features.clear();
    let mut listing = Vec::new();
    for c in 0..3 {
        for i in 0..per {
            let f: Vec<f32> = (0..16)
                .map(|d| if d == c { 3.0 } else { 1.0 } + 2.0 * rnd())
                .collect();
            let p = PathBuf::from(format!("{c}/{i}.jpg"));
            s.features.insert(p.clone(), f);
            listing.push((p, c));
        }
    }
    listing
}

#[test]
fn small_tasks_check_with_every_refit_and_large_ones_in_the_background() {
    let mut s = TaskState::default();
    // 60 images: the check runs in the refit itself.
    let listing = fill(&mut s, 20);
    assert!(s.refit(&listing).is_none());
    let c = s.checked.expect("checked");
    assert_eq!((c.images, c.classes), (60, 3));
    assert!(s.model.as_ref().unwrap().leave_out.is_some());

    // 150 images: 2.5 times as many; the refit fits the checked head and hands the check on.
    let listing = fill(&mut s, 50);
    s.version += 1;
    let job = s.refit(&listing).expect("a check is due");
    assert!(s.checking);
    let quick = s.model.clone().unwrap();
    assert_eq!(quick.kind, c.kind);
    assert!(
        quick.leave_out.is_none(),
        "no check speaks for 150 images yet"
    );
    assert_eq!(job.y.len(), 150);
    // While it runs, no second check is started.
    assert!(s.refit(&listing).is_none());

    // Its answer comes back for the same images: the model is the checked one.
    let version = s.version;
    let mut job = job;
    job.version = version;
    let result = job.run();
    s.checked_in(&job, result);
    assert!(!s.checking);
    assert_eq!(s.checked.unwrap().images, 150);
    let lo = s.model.as_ref().unwrap().leave_out.expect("checked model");

    // 159 images: within a quarter; the refit reuses the check's answer and starts none.
    let listing = fill(&mut s, 53);
    assert!(s.refit(&listing).is_none());
    assert_eq!(s.model.as_ref().unwrap().leave_out, Some(lo));
    assert_eq!(s.model.as_ref().unwrap().images(), 159);
}

#[test]
fn a_check_that_answers_after_the_images_changed_only_sets_the_next_choice() {
    let mut s = TaskState::default();
    let listing = fill(&mut s, 40);
    s.version = 1;
    let job = s.refit(&listing).expect("no check yet: due");
    // More images arrive before the check answers.
    let listing = fill(&mut s, 45);
    s.version = 2;
    assert!(
        s.refit(&listing).is_none(),
        "the first check is still running"
    );
    let before = s.model.clone().unwrap();
    let result = job.run();
    s.checked_in(&job, result);
    let after = s.model.clone().unwrap();
    assert!(
        Arc::ptr_eq(&before, &after),
        "the preview keeps the newer model"
    );
    assert_eq!(after.images(), 135);
    assert_eq!(s.checked.unwrap().images, 120);
    assert!(!s.checking);
}
