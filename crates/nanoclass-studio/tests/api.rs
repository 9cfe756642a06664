//! Router tests: every endpoint of `app()` through `tower::ServiceExt::oneshot`, without a
//! server, including the bad inputs (names that would leave the data folder, oversized and
//! undecodable uploads, unknown tasks, stale models).

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use futures_util::StreamExt;
use nanoclass::export::verify::{DEFAULT_TOLERANCE, Runtime, verify};
use nanoclass_studio::{AppState, StudioConfig, app};
use serde_json::{Value, json};
use tower::ServiceExt;

fn shared_data() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    assert!(
        p.join("hymenoptera").is_dir(),
        "real test data missing: {} (the repository expects ../shared/data beside it)",
        p.display()
    );
    p
}

/// The first `n` photos of a hymenoptera class.
fn photos(split: &str, class: &str, n: usize) -> Vec<PathBuf> {
    let dir = shared_data().join("hymenoptera").join(split).join(class);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v.truncate(n);
    assert_eq!(v.len(), n, "{}", dir.display());
    v
}

fn config(dir: &Path) -> StudioConfig {
    StudioConfig {
        data: dir.join("studio"),
        source: None,
        token: None,
        allowed_hosts: Vec::new(),
        max_upload_bytes: nanoclass_studio::DEFAULT_MAX_UPLOAD_BYTES,
        feature_cache: None,
        instant_weights: None,
    }
}

fn router(cfg: StudioConfig) -> Router {
    app(AppState::new(cfg).expect("studio state"))
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

async fn send(app: &Router, req: Request<Body>) -> Resp {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    Resp {
        status,
        headers,
        body,
    }
}

async fn call(app: &Router, method: &str, uri: &str, body: Option<Value>) -> Resp {
    let mut b = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    send(app, b.body(body).unwrap()).await
}

async fn raw(app: &Router, uri: &str, bytes: Vec<u8>, content_type: &str) -> Resp {
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(bytes))
        .unwrap();
    send(app, req).await
}

fn multipart(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "nanoclass-test-boundary";
    let mut body = Vec::new();
    for (name, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Files in a folder (names), sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn task_with(app: &Router, task: &str, cats: &[&str]) {
    let r = call(app, "POST", "/api/tasks", Some(json!({"name": task}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.error());
    for c in cats {
        let r = call(
            app,
            "POST",
            &format!("/api/tasks/{task}/categories"),
            Some(json!({ "name": c })),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.error());
    }
}

fn enc(s: &str) -> String {
    // Percent-encodes everything but unreserved ASCII (RFC 3986).
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn tiny_png() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(8, 6, image::Rgb([200, 10, 10]))
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// CRC-32 (ISO-HDLC, PNG's chunk checksum), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A small PNG whose header claims `width x height` pixels (IHDR rewritten, its CRC fixed):
/// with 2^31 - 1 rows, a decoder that trusts it asks for hundreds of gigabytes.
fn forged_png(width: u32, height: u32) -> Vec<u8> {
    let mut png = tiny_png();
    // Signature (8), IHDR length (4) and type (4), then width and height.
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

#[tokio::test]
async fn a_forged_image_header_is_refused_and_the_studio_keeps_answering() {
    let tmp = tempfile::tempdir().unwrap();
    let app = router(config(tmp.path()));
    task_with(&app, "t", &["c"]).await;
    let dir = tmp.path().join("studio/t/data/c");
    let url = "/api/tasks/t/categories/c/images";
    for (w, h) in [(1, 0x7FFF_FFFF), (100_000, 100_000)] {
        let png = forged_png(w, h);
        assert!(png.len() < 200, "{} bytes", png.len());
        let (ct, form) = multipart(&[("forged.png", &png)]);
        for (body, content_type) in [(png.clone(), "image/png".to_string()), (form, ct)] {
            let r = raw(&app, url, body, &content_type).await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{w}x{h} {content_type}: {}",
                r.error()
            );
            assert!(
                r.error().contains("too large") && r.error().contains(&h.to_string()),
                "{}",
                r.error()
            );
            // The next request is answered, and nothing was saved.
            let r = call(&app, "GET", "/api/tasks", None).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(listing(&dir).len(), 0);
        }
    }
    // A real image is still accepted.
    let r = raw(&app, url, tiny_png(), "image/png").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.error());
}

#[tokio::test]
async fn page_and_assets_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let app = router(config(tmp.path()));
    let r = call(&app, "GET", "/", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&r.body).contains("<script type=\"module\" src=\"app.js\">"));
    let r = call(&app, "GET", "/app.js", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    // Every module the page imports, from app.js down, is served as JavaScript, and the
    // imports go one way (no module imports one that imports it back).
    let imports = |js: &str, dir: &str| -> Vec<String> {
        js.lines()
            .filter(|l| l.starts_with("import "))
            .filter_map(|l| l.split(" from \"./").nth(1))
            .map(|rest| format!("{dir}{}", rest.split('"').next().unwrap()))
            .collect()
    };
    let mut graph = std::collections::BTreeMap::new();
    let mut todo = vec!["/app.js".to_string()];
    while let Some(path) = todo.pop() {
        if graph.contains_key(&path) {
            continue;
        }
        let r = call(&app, "GET", &path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let ct = r.headers[header::CONTENT_TYPE].to_str().unwrap();
        assert!(ct.starts_with("text/javascript"), "{path}: {ct}");
        let dir = &path[..=path.rfind('/').unwrap()];
        let deps = imports(&String::from_utf8_lossy(&r.body), dir);
        todo.extend(deps.iter().cloned());
        graph.insert(path, deps);
    }
    for m in ["api", "state", "camera", "collect", "train", "live"] {
        assert!(graph.contains_key(&format!("/js/{m}.js")), "{graph:?}");
    }
    // Depth-first walk from each module: reaching it again is a cycle.
    for start in graph.keys() {
        let mut stack = graph[start].clone();
        let mut seen = std::collections::BTreeSet::new();
        while let Some(m) = stack.pop() {
            assert_ne!(&m, start, "import cycle through {start}: {graph:?}");
            if seen.insert(m.clone()) {
                stack.extend(graph[&m].iter().cloned());
            }
        }
    }
    let r = call(&app, "GET", "/style.css", None).await;
    assert!(
        r.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    let r = call(&app, "GET", "/api/info", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let info = r.json();
    assert!(
        info["backbones"]
            .as_array()
            .unwrap()
            .contains(&json!("efficientnet_lite0"))
    );
    assert_eq!(info["source"]["uri"], Value::Null);
    // The devices are those this build trains on: the CPU always, a GPU with its feature.
    let devices: Vec<&str> = info["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    use nanoclass::infer::device::DeviceChoice;
    let want: Vec<&str> = [DeviceChoice::Cpu, DeviceChoice::Wgpu, DeviceChoice::Cuda]
        .into_iter()
        .filter(|d| *d == DeviceChoice::Cpu || d.compiled())
        .map(DeviceChoice::name)
        .collect();
    assert_eq!(devices, want);
    assert_eq!(info["default_device"], "cpu");
    let r = call(&app, "GET", "/api/nothing-here", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("no such"));
}

#[tokio::test]
async fn tasks_are_created_listed_and_moved_to_the_trash() {
    let tmp = tempfile::tempdir().unwrap();
    let app = router(config(tmp.path()));
    let r = call(
        &app,
        "POST",
        "/api/tasks",
        Some(json!({"name": "thumbs up", "kind": "classification"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.error());
    assert_eq!(r.json()["kind"], "classification");
    let meta: Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("studio/thumbs up/task.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["kind"], "classification");
    assert!(tmp.path().join("studio/thumbs up/data").is_dir());

    let r = call(
        &app,
        "POST",
        "/api/tasks",
        Some(json!({"name": "thumbs up"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = call(
        &app,
        "POST",
        "/api/tasks",
        Some(json!({"name": "x", "kind": "detection"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    for bad in ["..", "a/b", ".hidden", "", "a\\b", "tab\there"] {
        let r = call(&app, "POST", "/api/tasks", Some(json!({ "name": bad }))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert!(r.error().starts_with("task name"), "{bad:?}: {}", r.error());
        // A task's error speaks of the task, never of a category.
        assert!(!r.error().contains("categor"), "{bad:?}: {}", r.error());
    }
    // Nothing was created outside the data folder, and only the one task inside it.
    assert_eq!(listing(tmp.path()), vec!["studio"]);
    assert_eq!(listing(&tmp.path().join("studio")), vec!["thumbs up"]);

    let r = call(&app, "GET", "/api/tasks", None).await;
    let names: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["thumbs up"]);
    let r = call(&app, "GET", "/api/tasks/thumbs%20up", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["categories"], json!([]));
    let r = call(&app, "GET", "/api/tasks/nope", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("\"nope\""));
    let r = call(&app, "GET", "/api/tasks/..%2Fstudio", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = call(&app, "GET", "/api/tasks/%2E%2E", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let r = call(&app, "DELETE", "/api/tasks/thumbs%20up", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        call(&app, "GET", "/api/tasks/thumbs%20up", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let trash = listing(&tmp.path().join("studio/.trash"));
    assert_eq!(trash.len(), 1);
    assert!(trash[0].ends_with("-thumbs up"), "{trash:?}");
    assert_eq!(
        call(&app, "DELETE", "/api/tasks/nope", None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn categories_are_folders_and_names_cannot_leave_the_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let app = router(config(tmp.path()));
    task_with(&app, "t", &["蜂 bee", "red apple"]).await;
    let data = tmp.path().join("studio/t/data");
    assert_eq!(listing(&data), vec!["red apple", "蜂 bee"]);
    let r = call(&app, "GET", "/api/tasks/t", None).await;
    // Byte order of the names, the order the trainer gives the labels.
    assert_eq!(
        r.json()["categories"],
        json!([{"name": "red apple", "count": 0}, {"name": "蜂 bee", "count": 0}])
    );

    for bad in ["..", "a/b", "../x", "a\\b", ".", ".git", "x\ny", " lead"] {
        let r = call(
            &app,
            "POST",
            "/api/tasks/t/categories",
            Some(json!({ "name": bad })),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert!(
            r.error().starts_with("category name"),
            "{bad:?}: {}",
            r.error()
        );
    }
    // Names in the URL are decoded, then checked: %2F is a slash, %2E%2E is "..".
    for bad in ["..%2Fx", "a%2Fb", "%2E%2E", "..%5C..%5Cx"] {
        let r = call(
            &app,
            "GET",
            &format!("/api/tasks/t/categories/{bad}/images"),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        let r = call(
            &app,
            "DELETE",
            &format!("/api/tasks/t/categories/{bad}"),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(listing(&data), vec!["red apple", "蜂 bee"]);
    assert_eq!(listing(&tmp.path().join("studio")), vec!["t"]);

    let r = call(
        &app,
        "POST",
        "/api/tasks/t/categories",
        Some(json!({"name": "red apple"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = call(
        &app,
        "POST",
        "/api/tasks/nope/categories",
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Rename.
    let r = call(
        &app,
        "PATCH",
        &format!("/api/tasks/t/categories/{}", enc("red apple")),
        Some(json!({"name": "green apple"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    assert_eq!(listing(&data), vec!["green apple", "蜂 bee"]);
    let r = call(
        &app,
        "PATCH",
        &format!("/api/tasks/t/categories/{}", enc("green apple")),
        Some(json!({"name": "蜂 bee"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = call(
        &app,
        "PATCH",
        &format!("/api/tasks/t/categories/{}", enc("green apple")),
        Some(json!({"name": "../escape"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = call(
        &app,
        "PATCH",
        "/api/tasks/t/categories/missing",
        Some(json!({"name": "y"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Delete moves the folder to the task's trash.
    let r = call(
        &app,
        "DELETE",
        &format!("/api/tasks/t/categories/{}", enc("蜂 bee")),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(listing(&data), vec!["green apple"]);
    let trash = listing(&tmp.path().join("studio/t/trash"));
    assert!(
        trash.len() == 1 && trash[0].ends_with("-蜂 bee"),
        "{trash:?}"
    );
    let r = call(&app, "DELETE", "/api/tasks/t/categories/missing", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn uploads_are_checked_by_the_decoder_and_saved_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.max_upload_bytes = 400_000;
    let app = router(cfg);
    task_with(&app, "t", &["ants"]).await;
    let dir = tmp.path().join("studio/t/data/ants");
    let url = "/api/tasks/t/categories/ants/images";
    let ant = std::fs::read(&photos("train", "ants", 1)[0]).unwrap();
    assert!(ant.len() < 400_000);

    // A raw JPEG body.
    let r = raw(&app, url, ant.clone(), "image/jpeg").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.error());
    assert_eq!(r.json()["count"], 1);
    let saved = r.json()["saved"][0].as_str().unwrap().to_string();
    assert!(saved.ends_with(".jpg"));
    assert_eq!(
        std::fs::read(dir.join(&saved)).unwrap(),
        ant,
        "stored byte for byte"
    );

    // Multipart with two files; a PNG named .jpg is stored as .png (format from the bytes).
    let png = tiny_png();
    let (ct, body) = multipart(&[("a.jpg", &png), ("b.jpg", &ant)]);
    let r = raw(&app, url, body, &ct).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.error());
    let saved: Vec<String> = r.json()["saved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(saved.len(), 2);
    assert!(
        saved[0].ends_with(".png") && saved[1].ends_with(".jpg"),
        "{saved:?}"
    );
    assert_eq!(r.json()["count"], 3);
    let before = listing(&dir);

    // A truncated JPEG: 400 naming the reason; nothing saved, no temporary file left.
    let cut = ant[..ant.len() / 2].to_vec();
    let r = raw(&app, url, cut.clone(), "image/jpeg").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.error().contains("truncated") && r.error().contains("nothing was saved"),
        "{}",
        r.error()
    );
    // Not an image at all.
    let r = raw(
        &app,
        url,
        b"<html>not an image</html>".to_vec(),
        "image/jpeg",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("unknown image format"), "{}", r.error());
    let r = raw(&app, url, vec![], "image/jpeg").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("empty"), "{}", r.error());
    // One bad file among good ones: none is saved, and the bad one is named.
    let (ct, body) = multipart(&[("good.jpg", &ant), ("broken.jpg", &cut)]);
    let r = raw(&app, url, body, &ct).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("broken.jpg"), "{}", r.error());
    // Over the limit: 413, raw and multipart.
    let big = vec![0u8; 500_000];
    let r = raw(&app, url, big.clone(), "image/jpeg").await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let (ct, body) = multipart(&[("big.jpg", &big)]);
    let r = raw(&app, url, body, &ct).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(listing(&dir), before, "nothing saved by a refused upload");

    // Unknown task or category.
    assert_eq!(
        raw(
            &app,
            "/api/tasks/nope/categories/ants/images",
            ant.clone(),
            "image/jpeg"
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        raw(
            &app,
            "/api/tasks/t/categories/bees/images",
            ant.clone(),
            "image/jpeg"
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        raw(
            &app,
            "/api/tasks/t/categories/..%2F..%2Fx/images",
            ant.clone(),
            "image/jpeg"
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn images_are_listed_served_thumbnailed_and_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let app = router(config(tmp.path()));
    task_with(&app, "t", &["ants"]).await;
    let url = "/api/tasks/t/categories/ants/images";
    let ant = std::fs::read(&photos("train", "ants", 1)[0]).unwrap();
    let name = raw(&app, url, ant.clone(), "image/jpeg").await.json()["saved"][0]
        .as_str()
        .unwrap()
        .to_string();

    let r = call(&app, "GET", url, None).await;
    assert_eq!(r.json(), json!([{"name": name, "bytes": ant.len()}]));
    let r = call(&app, "GET", &format!("{url}/{name}"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "image/jpeg");
    assert_eq!(r.body.to_vec(), ant);
    let r = call(&app, "GET", &format!("{url}/{name}/thumb"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let thumb = image::load_from_memory(&r.body).unwrap();
    let full = image::load_from_memory(&ant).unwrap();
    assert_eq!(thumb.width().max(thumb.height()), 160);
    let (ra, rt) = (
        full.width() as f32 / full.height() as f32,
        thumb.width() as f32 / thumb.height() as f32,
    );
    assert!((ra - rt).abs() < 0.02, "aspect kept: {ra} vs {rt}");

    for bad in ["..%2F..%2Ftask.json", ".hidden.jpg"] {
        assert_eq!(
            call(&app, "GET", &format!("{url}/{bad}"), None)
                .await
                .status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    assert_eq!(
        call(&app, "GET", &format!("{url}/missing.jpg"), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&app, "DELETE", &format!("{url}/missing.jpg"), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = call(&app, "DELETE", &format!("{url}/{name}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(call(&app, "GET", url, None).await.json(), json!([]));
    let trash = listing(&tmp.path().join("studio/t/trash"));
    assert!(
        trash.len() == 1 && trash[0].ends_with(&format!("ants-{name}")),
        "{trash:?}"
    );
}

#[tokio::test]
async fn folders_on_the_device_are_imported_skipping_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let app = router(config(tmp.path()));
    task_with(&app, "t", &["bees"]).await;
    let src = tmp.path().join("camera roll");
    std::fs::create_dir(&src).unwrap();
    for p in photos("train", "bees", 3) {
        std::fs::copy(&p, src.join(p.file_name().unwrap())).unwrap();
    }
    let good = std::fs::read(&photos("train", "bees", 1)[0]).unwrap();
    std::fs::write(src.join("cut.JPG"), &good[..good.len() / 3]).unwrap();
    std::fs::write(src.join(".DS_Store"), b"junk").unwrap();
    std::fs::write(src.join("notes.txt"), b"hello").unwrap();
    let url = "/api/tasks/t/categories/bees/import";
    let r = call(&app, "POST", url, Some(json!({"path": src}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    let v = r.json();
    assert_eq!(v["imported"], 3);
    assert_eq!(v["count"], 3);
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0]["file"].as_str().unwrap().ends_with("cut.JPG"));
    assert!(skipped[0]["reason"].as_str().unwrap().contains("truncated"));
    let r = call(
        &app,
        "POST",
        url,
        Some(json!({"path": tmp.path().join("nowhere")})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("not a folder"));
    let r = call(
        &app,
        "POST",
        "/api/tasks/nope/categories/bees/import",
        Some(json!({"path": src})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// A folder source of real ant photos at 20 frames per second.
fn ant_source(tmp: &Path) -> String {
    let dir = tmp.join("camera");
    std::fs::create_dir_all(&dir).unwrap();
    for p in photos("val", "ants", 3) {
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    format!("file://{}?fps=20", dir.display())
}

async fn first_chunk_with(body: Body, needle: &str, limit: Duration) -> String {
    let mut stream = body.into_data_stream();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {needle:?} within {limit:?}: {}",
                    String::from_utf8_lossy(&seen)
                )
            });
        let chunk = next.expect("stream ended").unwrap();
        seen.extend_from_slice(&chunk);
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains(needle) {
            return text;
        }
    }
}

#[tokio::test]
async fn the_device_source_is_captured_streamed_and_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    // Without a source: capture and the stream say so.
    let app0 = router(config(tmp.path()));
    task_with(&app0, "t", &["ants"]).await;
    let r = call(&app0, "POST", "/api/tasks/t/categories/ants/capture", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.error().contains("no device source"));
    assert_eq!(
        call(&app0, "GET", "/api/source/stream", None).await.status,
        StatusCode::CONFLICT
    );

    let mut cfg = config(tmp.path());
    cfg.source = Some(ant_source(tmp.path()));
    let app = router(cfg);
    let r = call(&app, "GET", "/api/source", None).await;
    assert!(
        r.json()["description"].as_str().unwrap().contains("camera"),
        "{}",
        r.json()
    );

    // One capture = one frame, saved as a JPEG of the photo's size.
    let r = call(&app, "POST", "/api/tasks/t/categories/ants/capture", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.error());
    assert_eq!(r.json()["count"], 1);
    let name = r.json()["saved"][0].as_str().unwrap().to_string();
    let saved = image::open(tmp.path().join("studio/t/data/ants").join(&name)).unwrap();
    let sizes: Vec<(u32, u32)> = photos("val", "ants", 3)
        .iter()
        .map(|p| image::image_dimensions(p).unwrap())
        .collect();
    assert!(
        sizes.contains(&(saved.width(), saved.height())),
        "{:?} not among {sizes:?}",
        (saved.width(), saved.height())
    );
    let r = call(&app, "POST", "/api/tasks/t/categories/ants/capture", None).await;
    assert_eq!(r.json()["count"], 2);
    assert_eq!(
        call(&app, "POST", "/api/tasks/t/categories/nope/capture", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // A single frame, and the MJPEG stream.
    let r = call(&app, "GET", "/api/source/frame", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(image::load_from_memory(&r.body).is_ok());
    let resp = app
        .clone()
        .oneshot(
            Request::get("/api/source/stream")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "multipart/x-mixed-replace; boundary=frame"
    );
    let text = first_chunk_with(
        resp.into_body(),
        "Content-Type: image/jpeg",
        Duration::from_secs(10),
    )
    .await;
    assert!(text.starts_with("--frame\r\n"));

    // Replacing the source: a bad URI is refused with the camera's reason; the old one stays.
    let r = call(
        &app,
        "PUT",
        "/api/source",
        Some(json!({"uri": "file:///no/such/folder"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("/no/such/folder"), "{}", r.error());
    let r = call(
        &app,
        "PUT",
        "/api/source",
        Some(json!({"uri": ant_source(&tmp.path().join("second"))})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    assert_eq!(r.json()["generation"], 2);
    assert!(r.json()["uri"].as_str().unwrap().contains("second"));
    let r = call(&app, "POST", "/api/tasks/t/categories/ants/capture", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.error());
}

#[tokio::test]
async fn a_token_guards_every_request() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.token = Some("s3cret".into());
    let app = router(cfg);
    for uri in ["/", "/api/tasks", "/app.js", "/api/source/stream"] {
        let r = call(&app, "GET", uri, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    assert!(
        call(&app, "GET", "/api/tasks", None)
            .await
            .error()
            .contains("token")
    );
    assert_eq!(
        call(&app, "GET", "/api/tasks?token=wrong", None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let r = call(&app, "GET", "/?token=s3cret", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let cookie = r.headers[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("nanoclass_token=s3cret;") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let req = |h: (&str, &str)| {
        Request::get("/api/tasks")
            .header(h.0, h.1)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(
        send(&app, req(("cookie", "a=b; nanoclass_token=s3cret")))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, req(("authorization", "Bearer s3cret")))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, req(("authorization", "Bearer s3cre")))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // The scheme is case-insensitive (RFC 7235); a different scheme is not a bearer token.
    for ok in ["bearer s3cret", "BEARER  s3cret", "BeArEr s3cret "] {
        assert_eq!(
            send(&app, req(("authorization", ok))).await.status,
            StatusCode::OK,
            "{ok}"
        );
    }
    for bad in ["Basic s3cret", "s3cret", "bearers3cret", "bearer"] {
        let r = send(&app, req(("authorization", bad))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(r.error().contains("access token required"), "{bad}");
    }
    assert_eq!(
        send(&app, req(("cookie", "nanoclass_token=nope")))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn binding_beyond_loopback_requires_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let local = nanoclass_studio::start(nanoclass_studio::ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        config: config(tmp.path()),
    })
    .await
    .unwrap();
    assert!(local.token.is_none());
    assert_eq!(
        local.url,
        format!("http://127.0.0.1:{}/", local.addr.port())
    );
    local.task.abort();
    let open = nanoclass_studio::start(nanoclass_studio::ServeOptions {
        host: "0.0.0.0".into(),
        port: 0,
        config: config(tmp.path()),
    })
    .await
    .unwrap();
    let token = open.token.clone().expect("a token is generated");
    assert_eq!(token.len(), 32);
    assert!(
        open.url.ends_with(&format!("?token={token}")),
        "{}",
        open.url
    );
    open.task.abort();
    let bad = nanoclass_studio::start(nanoclass_studio::ServeOptions {
        host: "not-a-host".into(),
        port: 0,
        config: config(tmp.path()),
    })
    .await;
    assert!(bad.unwrap_err().contains("not-a-host"));
}

/// The expected time of training `task` with the settings `body` (200 expected).
async fn estimate(app: &Router, task: &str, body: &Value) -> Value {
    let uri = format!("/api/tasks/{task}/train/estimate");
    let r = call(app, "POST", &uri, Some(body.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    r.json()
}

async fn train_and_wait(app: &Router, task: &str, body: Value) -> Vec<Value> {
    let r = call(app, "POST", &format!("/api/tasks/{task}/train"), Some(body)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.error());
    let resp = app
        .clone()
        .oneshot(
            Request::get(format!("/api/tasks/{task}/train/events"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    // The stream ends after the job's last event.
    let body = tokio::time::timeout(
        Duration::from_secs(600),
        axum::body::to_bytes(resp.into_body(), usize::MAX),
    )
    .await
    .expect("training finished within 10 minutes")
    .unwrap();
    String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn training_streams_held_out_progress_and_live_scores_follow_the_categories() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.source = Some(ant_source(tmp.path()));
    cfg.feature_cache = Some(tmp.path().join("features"));
    let app = router(cfg);
    task_with(&app, "hym", &["ants", "bees"]).await;
    for class in ["ants", "bees"] {
        let files: Vec<Vec<u8>> = photos("train", class, 15)
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        let parts: Vec<(&str, &[u8])> = files.iter().map(|b| ("x.jpg", b.as_slice())).collect();
        let (ct, body) = multipart(&parts);
        let r = raw(
            &app,
            &format!("/api/tasks/hym/categories/{class}/images"),
            body,
            &ct,
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.error());
    }
    // Bad settings are refused before anything runs.
    for (body, why) in [
        (json!({"arch": "vgg16"}), "backbone"),
        (json!({"mode": "half"}), "mode"),
        (json!({"batch_size": 1}), "batch size"),
        (json!({"lr": -1.0}), "learning rate"),
        (json!({"epochs": 0}), "epochs"),
    ] {
        let r = call(&app, "POST", "/api/tasks/hym/train", Some(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.error().contains(why), "{why}: {}", r.error());
    }
    assert_eq!(
        call(&app, "POST", "/api/tasks/nope/train", Some(json!({})))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&app, "GET", "/api/tasks/hym/train", None).await.json()["state"],
        "idle"
    );
    assert_eq!(
        call(&app, "POST", "/api/tasks/hym/train/stop", None)
            .await
            .status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        call(&app, "GET", "/api/tasks/hym/train/events", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // The expected time before training: 30 images through the backbone, none cached, 4
    // epochs of ceil(24 / 8) steps, at the reference machine's rates (nothing ran here yet).
    let settings =
        json!({"arch": "efficientnet_lite0", "mode": "frozen", "epochs": 4, "batch_size": 8});
    let before = estimate(&app, "hym", &settings).await;
    assert_eq!(
        (
            &before["train_images"],
            &before["val_images"],
            &before["body_views"],
            &before["cached"],
            &before["steps"],
            &before["from"]
        ),
        (
            &json!(24),
            &json!(6),
            &json!(30),
            &json!(0),
            &json!(12),
            &json!("reference")
        ),
        "{before}"
    );
    assert!(before["seconds"].as_f64().unwrap() > 0.0, "{before}");
    let r = call(
        &app,
        "POST",
        "/api/tasks/hym/train/estimate",
        Some(json!({"mode": "half"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let events = train_and_wait(&app, "hym", settings.clone()).await;
    // Afterwards the features are cached and this machine's rates recorded.
    let after = estimate(&app, "hym", &settings).await;
    assert_eq!(
        (&after["body_views"], &after["cached"], &after["from"]),
        (&json!(0), &json!(30), &json!("this_machine")),
        "{after}"
    );
    let epochs: Vec<&Value> = events.iter().filter(|e| e["type"] == "epoch").collect();
    assert_eq!(epochs.len(), 4, "{events:?}");
    for e in &epochs {
        let v = e["val_top1"].as_f64().expect("held-out top-1 each epoch");
        assert!((0.0..=1.0).contains(&v));
        assert!(
            e.get("train_top1").is_none(),
            "training accuracy is never sent"
        );
    }
    let done = events.last().unwrap();
    assert_eq!(done["type"], "done", "{events:?}");
    assert_eq!(done["run"], 1);
    // 15 per class, 20 % held out: 3 + 3.
    assert_eq!(done["val_images"], 6);
    let eval = &done["eval"];
    let counts: u64 = eval["confusion"]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(counts, 6);
    assert_eq!(eval["confusion"]["classes"], json!(["ants", "bees"]));
    assert!(
        tmp.path()
            .join("studio/hym/runs/1/eval/eval.json")
            .is_file()
    );
    assert!(
        tmp.path()
            .join("studio/hym/runs/1/model.safetensors")
            .is_file()
    );
    assert_eq!(
        call(&app, "GET", "/api/tasks/hym/train", None).await.json()["state"],
        "done"
    );

    let runs = call(&app, "GET", "/api/tasks/hym/runs", None).await.json();
    assert_eq!(runs.as_array().unwrap().len(), 1);
    assert_eq!(runs[0]["ready"], true);
    assert_eq!(runs[0]["stale"], false);
    assert_eq!(runs[0]["labels"], json!(["ants", "bees"]));
    let r = call(&app, "GET", "/api/tasks/hym/runs/1", None).await;
    assert_eq!(r.json()["metrics"].as_array().unwrap().len(), 4);
    assert_eq!(
        call(&app, "GET", "/api/tasks/hym/runs/7", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&app, "GET", "/api/tasks/hym/runs/abc", None)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    // A held-out photo of each class, as a browser camera frame.
    for (class, photo) in [
        ("ants", &photos("val", "ants", 1)[0]),
        ("bees", &photos("val", "bees", 1)[0]),
    ] {
        let r = raw(
            &app,
            "/api/tasks/hym/runs/1/predict",
            std::fs::read(photo).unwrap(),
            "image/jpeg",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.error());
        let v = r.json();
        assert_eq!(v["label"], class, "{v}");
        let p: f64 = v["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum();
        assert!((p - 1.0).abs() < 1e-4);
    }
    let r = raw(
        &app,
        "/api/tasks/hym/runs/1/predict",
        b"garbage".to_vec(),
        "image/jpeg",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = raw(
        &app,
        "/api/tasks/hym/runs/1/predict?smoothing=1.5",
        std::fs::read(&photos("val", "ants", 1)[0]).unwrap(),
        "image/jpeg",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // A threshold above every score gives no label.
    let r = raw(
        &app,
        "/api/tasks/hym/runs/1/predict?threshold=1",
        std::fs::read(&photos("val", "ants", 1)[0]).unwrap(),
        "image/jpeg",
    )
    .await;
    assert_eq!(r.json()["label"], Value::Null);

    // Live scores of the device source (held-out ant photos) over server-sent events.
    let resp = app
        .clone()
        .oneshot(
            Request::get("/api/tasks/hym/runs/1/live?smoothing=0.5")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = first_chunk_with(
        resp.into_body(),
        "\"type\":\"scores\"",
        Duration::from_secs(30),
    )
    .await;
    let line = text.lines().find(|l| l.contains("\"scores\"")).unwrap();
    let v: Value = serde_json::from_str(line.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(v["labels"], json!(["ants", "bees"]));
    assert_eq!(v["run"], 1);

    // The classifier in a regression task with the same categories is refused, naming both.
    let r = call(
        &app,
        "POST",
        "/api/tasks",
        Some(json!({"name": "pts", "kind": "regression"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    for c in ["ants", "bees"] {
        call(
            &app,
            "POST",
            "/api/tasks/pts/categories",
            Some(json!({ "name": c })),
        )
        .await;
    }
    copy_tree(
        &tmp.path().join("studio/hym/runs/1"),
        &tmp.path().join("studio/pts/runs/1"),
    );
    let r = raw(
        &app,
        "/api/tasks/pts/runs/1/predict",
        std::fs::read(&photos("val", "ants", 1)[0]).unwrap(),
        "image/jpeg",
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        r.error().contains("classification model") && r.error().contains("regression task"),
        "{}",
        r.error()
    );

    // The run's export bundles: zips that `verify` takes as they are (ONNX, Triton); the .pth
    // bundle's kit is checked in PyTorch, which verify says. Unknown formats and runs are named.
    for format in ["onnx", "triton", "pth"] {
        let r = call(
            &app,
            "GET",
            &format!("/api/tasks/hym/runs/1/export?format={format}"),
            None,
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{format}: {:?}",
            String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
        );
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/zip");
        assert_eq!(
            r.headers[header::CONTENT_DISPOSITION],
            format!("attachment; filename=\"hym-run1-{format}.zip\"")
        );
        assert_eq!(&r.body[..4], b"PK\x03\x04");
        let zip = tmp.path().join(format!("download-{format}.zip"));
        std::fs::write(&zip, &r.body).unwrap();
        let checked = verify(&zip, Runtime::Tract, DEFAULT_TOLERANCE);
        if format == "pth" {
            let e = checked.unwrap_err().to_string();
            assert!(e.contains("PyTorch state dict"), "{e}");
        } else {
            let report = checked.unwrap();
            assert!(
                report.passed() && report.samples >= 2,
                "{format}: {report:?}"
            );
        }
        // The bundle is also kept in the run's export folder.
        assert!(
            tmp.path()
                .join(format!("studio/hym/runs/1/export/hym-run1-{format}.zip"))
                .is_file()
        );
    }
    // The default format is ONNX.
    let r = call(&app, "GET", "/api/tasks/hym/runs/1/export", None).await;
    assert_eq!(
        r.headers[header::CONTENT_DISPOSITION],
        "attachment; filename=\"hym-run1-onnx.zip\""
    );
    let r = call(
        &app,
        "GET",
        "/api/tasks/hym/runs/1/export?format=tflite",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.error().contains("\"tflite\"") && r.error().contains("onnx, triton, pth"),
        "{}",
        r.error()
    );
    let r = call(&app, "GET", "/api/tasks/hym/runs/9/export", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.error());

    // A second category set: deleting "bees" makes run 1 stale; it is never used again.
    let r = call(&app, "DELETE", "/api/tasks/hym/categories/bees", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let runs = call(&app, "GET", "/api/tasks/hym/runs", None).await.json();
    assert_eq!(runs[0]["stale"], true);
    assert!(runs[0]["note"].as_str().unwrap().contains("retrain needed"));
    let r = raw(
        &app,
        "/api/tasks/hym/runs/1/predict",
        std::fs::read(&photos("val", "ants", 1)[0]).unwrap(),
        "image/jpeg",
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        r.error().contains("retrain needed") && r.error().contains("[bees]"),
        "{}",
        r.error()
    );
    let r = call(&app, "GET", "/api/tasks/hym/runs/1/live", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // One category left: training is refused with the reason.
    let r = call(&app, "POST", "/api/tasks/hym/train", Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("at least 2"), "{}", r.error());
}

#[tokio::test]
async fn a_running_training_stops_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let app = router(config(tmp.path()));
    task_with(&app, "s", &["ants", "bees"]).await;
    for class in ["ants", "bees"] {
        let r = call(
            &app,
            "POST",
            &format!("/api/tasks/s/categories/{class}/import"),
            Some(json!({"path": shared_data().join("hymenoptera/val").join(class)})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    }
    let r = call(&app, "POST", "/api/tasks/s/train", Some(json!({"arch": "resnet18", "weights": "none", "mode": "full", "epochs": 50, "batch_size": 4}))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.error());
    // One job at a time.
    let r = call(&app, "POST", "/api/tasks/s/train", Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Categories cannot change under a running job.
    assert_eq!(
        call(&app, "DELETE", "/api/tasks/s/categories/ants", None)
            .await
            .status,
        StatusCode::CONFLICT
    );
    let r = call(&app, "POST", "/api/tasks/s/train/stop", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    let resp = app
        .clone()
        .oneshot(
            Request::get("/api/tasks/s/train/events")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = tokio::time::timeout(
        Duration::from_secs(300),
        axum::body::to_bytes(resp.into_body(), usize::MAX),
    )
    .await
    .expect("stopped in time")
    .unwrap();
    let last: Value = serde_json::from_str(
        String::from_utf8_lossy(&body)
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["type"], "stopped", "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("stopped on request")
    );
    assert_eq!(
        call(&app, "GET", "/api/tasks/s/train", None).await.json()["state"],
        "stopped"
    );
}

/// A `w x h` JPEG of one colour.
fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(w, h, image::Rgb([30, 120, 200]))
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

/// Splits `<x>_<y>_<uuid>.jpg` into the point and the uuid.
fn point_and_uuid(name: &str) -> ([u32; 2], String) {
    let stem = name
        .strip_suffix(".jpg")
        .unwrap_or_else(|| panic!("{name}"));
    let mut parts = stem.splitn(3, '_');
    let x = parts.next().unwrap().parse().unwrap();
    let y = parts.next().unwrap().parse().unwrap();
    let uuid = parts.next().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&uuid).is_ok(), "{name}: {uuid}");
    ([x, y], uuid)
}

#[tokio::test]
async fn regression_tasks_save_clicked_points_and_refuse_bad_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let app = router(config(tmp.path()));
    // The kind is stored with the task; a task.json without one is a classification task.
    let r = call(
        &app,
        "POST",
        "/api/tasks",
        Some(json!({"name": "nose", "kind": "regression"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.error());
    assert_eq!(r.json()["kind"], "regression");
    let meta: Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("studio/nose/task.json")).unwrap())
            .unwrap();
    assert_eq!(meta["kind"], "regression");
    std::fs::create_dir_all(tmp.path().join("studio/old/data")).unwrap();
    std::fs::write(tmp.path().join("studio/old/task.json"), r#"{"created": 1}"#).unwrap();
    let tasks = call(&app, "GET", "/api/tasks", None).await.json();
    let kinds: Vec<(&str, &str)> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![("nose", "regression"), ("old", "classification")]
    );
    let info = call(&app, "GET", "/api/info", None).await.json();
    assert_eq!(info["task_kinds"], json!(["classification", "regression"]));
    for (task, cat) in [("nose", "nose"), ("old", "things")] {
        let r = call(
            &app,
            "POST",
            &format!("/api/tasks/{task}/categories"),
            Some(json!({ "name": cat })),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.error());
    }
    let dir = tmp.path().join("studio/nose/data/nose");

    // A clicked frame is saved under its point, exactly as sent.
    let frame = jpeg(64, 48);
    let r = raw(
        &app,
        "/api/tasks/nose/categories/nose/points?x=10&y=47",
        frame.clone(),
        "image/jpeg",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.error());
    let v = r.json();
    assert_eq!(v["count"], 1);
    assert_eq!(v["point"], json!([10, 47]));
    let name = v["saved"][0].as_str().unwrap().to_string();
    assert_eq!(point_and_uuid(&name).0, [10, 47]);
    assert_eq!(std::fs::read(dir.join(&name)).unwrap(), frame);
    assert_eq!(
        nanoclass::data::folder::parse_dli_point(&dir.join(&name)).unwrap(),
        [10.0, 47.0]
    );

    // Bad points and bad frames are refused with the reason; nothing is written.
    for (query, body, why) in [
        (
            "x=64&y=0",
            frame.clone(),
            "point (64, 0) lies outside the 64x48 image",
        ),
        (
            "x=0&y=48",
            frame.clone(),
            "x must be in 0..=63, y in 0..=47",
        ),
        // Inside the 64x48 frame but beside its centre square (x 8..56), which the model sees.
        (
            "x=3&y=20",
            frame.clone(),
            "point (3, 20) lies outside the model's view, the centre square of the 64x48 image (x in 8..56, y in 0..48)",
        ),
        ("x=57&y=20", frame.clone(), "outside the model's view"),
        (
            "x=-1&y=3",
            frame.clone(),
            "x = \"-1\" is not a non-negative integer",
        ),
        ("x=1.5&y=3", frame.clone(), "x = \"1.5\""),
        ("x=3", frame.clone(), "no y"),
        ("x=1&y=1", b"not an image".to_vec(), "frame"),
    ] {
        let r = raw(
            &app,
            &format!("/api/tasks/nose/categories/nose/points?{query}"),
            body,
            "image/jpeg",
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(r.error().contains(why), "{query}: {}", r.error());
    }
    assert_eq!(listing(&dir), vec![name.clone()]);
    // Classification tasks take no points, and regression tasks no point-less frames.
    let r = raw(
        &app,
        "/api/tasks/old/categories/things/points?x=1&y=1",
        frame.clone(),
        "image/jpeg",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.error().contains("needs a regression task") && r.error().contains("classification"),
        "{}",
        r.error()
    );
    let r = call(
        &app,
        "POST",
        "/api/tasks/nose/categories/nose/capture",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("regression task"), "{}", r.error());
    // Uploads into a regression task must carry the point in the course's file name.
    let (ct, body) = multipart(&[("photo.jpg", &frame)]);
    let r = raw(&app, "/api/tasks/nose/categories/nose/images", body, &ct).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.error().contains("photo.jpg") && r.error().contains("<x>_<y>_<uuid>.jpg"),
        "{}",
        r.error()
    );
    let (ct, body) = multipart(&[("13_4_a.jpg", &frame), ("99_4_b.jpg", &frame)]);
    let r = raw(&app, "/api/tasks/nose/categories/nose/images", body, &ct).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.error().contains("99_4_b.jpg") && r.error().contains("lies outside"),
        "{}",
        r.error()
    );
    assert_eq!(listing(&dir).len(), 1, "one bad file saves nothing");
    let (ct, body) = multipart(&[("3_4_a.jpg", &frame)]);
    let r = raw(&app, "/api/tasks/nose/categories/nose/images", body, &ct).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.error().contains("outside the model's view"),
        "{}",
        r.error()
    );
    let (ct, body) = multipart(&[("13_4_a.jpg", &frame)]);
    let r = raw(&app, "/api/tasks/nose/categories/nose/images", body, &ct).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.error());
    assert_eq!(r.json()["count"], 2);
    assert_eq!(
        point_and_uuid(r.json()["saved"][0].as_str().unwrap()).0,
        [13, 4]
    );
    // The listing carries each point and the image size.
    let imgs = call(&app, "GET", "/api/tasks/nose/categories/nose/images", None)
        .await
        .json();
    assert_eq!(imgs[0]["name"], name.as_str());
    assert_eq!(imgs[0]["point"], json!([10, 47]));
    assert_eq!(imgs[0]["size"], json!([64, 48]));
    assert_eq!(imgs[1]["point"], json!([13, 4]));
}

#[tokio::test]
async fn a_corrected_point_renames_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let app = router(config(tmp.path()));
    let r = call(
        &app,
        "POST",
        "/api/tasks",
        Some(json!({"name": "r", "kind": "regression"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    call(
        &app,
        "POST",
        "/api/tasks/r/categories",
        Some(json!({"name": "eye"})),
    )
    .await;
    let frame = jpeg(64, 48);
    let r = raw(
        &app,
        "/api/tasks/r/categories/eye/points?x=15&y=6",
        frame.clone(),
        "image/jpeg",
    )
    .await;
    let old = r.json()["saved"][0].as_str().unwrap().to_string();
    let (_, uuid) = point_and_uuid(&old);
    let dir = tmp.path().join("studio/r/data/eye");

    let r = call(
        &app,
        "PUT",
        &format!("/api/tasks/r/categories/eye/images/{old}/point"),
        Some(json!({"x": 55, "y": 0})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    let v = r.json();
    let new = format!("55_0_{uuid}.jpg");
    assert_eq!(v["name"], new.as_str());
    assert_eq!(v["point"], json!([55, 0]));
    assert_eq!(v["count"], 1);
    assert_eq!(listing(&dir), vec![new.clone()], "renamed, not copied");
    assert_eq!(std::fs::read(dir.join(&new)).unwrap(), frame);
    let imgs = call(&app, "GET", "/api/tasks/r/categories/eye/images", None)
        .await
        .json();
    assert_eq!(imgs[0]["point"], json!([55, 0]));

    // Outside the model's view, outside the image, a missing image, a bad body: refused, the
    // file stays.
    let r = call(
        &app,
        "PUT",
        &format!("/api/tasks/r/categories/eye/images/{new}/point"),
        Some(json!({"x": 60, "y": 0})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.error().contains("outside the model's view"),
        "{}",
        r.error()
    );
    let r = call(
        &app,
        "PUT",
        &format!("/api/tasks/r/categories/eye/images/{new}/point"),
        Some(json!({"x": 64, "y": 0})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.error().contains(&new) && r.error().contains("lies outside the 64x48 image"),
        "{}",
        r.error()
    );
    let r = call(
        &app,
        "PUT",
        &format!("/api/tasks/r/categories/eye/images/{old}/point"),
        Some(json!({"x": 1, "y": 1})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &app,
        "PUT",
        &format!("/api/tasks/r/categories/eye/images/{new}/point"),
        Some(json!({"x": -3, "y": 1})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(listing(&dir), vec![new.clone()]);
    // The same point again keeps the name.
    let r = call(
        &app,
        "PUT",
        &format!("/api/tasks/r/categories/eye/images/{new}/point"),
        Some(json!({"x": 55, "y": 0})),
    )
    .await;
    assert_eq!(r.json()["name"], new.as_str());
}

/// Copies a folder tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn a_regression_task_trains_points_and_its_model_runs_only_there() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    // The instant preview is on: it must refuse the regression task.
    cfg.instant_weights = Some("efficientnet_lite0".into());
    let app = router(cfg);
    let r = call(
        &app,
        "POST",
        "/api/tasks",
        Some(json!({"name": "spot", "kind": "regression"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    call(
        &app,
        "POST",
        "/api/tasks/spot/categories",
        Some(json!({"name": "marker"})),
    )
    .await;
    // Real photos with a magenta disc at a known point, saved through the click endpoint.
    let set = nanoclass::data::markers::MarkerSet {
        source: shared_data().join("hymenoptera/train/ants"),
        out: tmp.path().join("markers"),
        size: 224,
        radius: 10.0,
        categories: 1,
        train: 15,
        val: 1,
        seed: 3,
    };
    let written = set.write().unwrap();
    for m in &written[..15] {
        let r = raw(
            &app,
            &format!(
                "/api/tasks/spot/categories/marker/points?x={}&y={}",
                m.point[0], m.point[1]
            ),
            std::fs::read(&m.path).unwrap(),
            "image/jpeg",
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.error());
    }
    let r = call(&app, "GET", "/api/tasks/spot/instant", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.error().contains("classification tasks"), "{}", r.error());

    // One category is enough for a point model; the held-out figure is the error in pixels.
    let events = train_and_wait(
        &app,
        "spot",
        json!({"mode": "frozen", "epochs": 2, "batch_size": 8}),
    )
    .await;
    let epochs: Vec<&Value> = events.iter().filter(|e| e["type"] == "epoch").collect();
    assert_eq!(epochs.len(), 2, "{events:?}");
    for e in &epochs {
        let px = e["val_error_px"]
            .as_f64()
            .expect("held-out error each epoch");
        assert!(px.is_finite() && px >= 0.0, "{e}");
        assert_eq!(e["val_top1"], Value::Null);
    }
    let done = events.last().unwrap();
    assert_eq!(done["type"], "done", "{events:?}");
    assert_eq!(done["task"], "regression");
    assert_eq!(done["val_images"], 3);
    assert!(done["best_val_error_px"].as_f64().is_some(), "{done}");
    let eval = &done["eval"];
    assert_eq!(eval["task"], "regression", "{eval}");
    assert_eq!(eval["per_category"][0]["category"], "marker");
    assert_eq!(eval["overall"]["n"], 3);
    assert!(eval.get("confusion").is_none());
    let runs = call(&app, "GET", "/api/tasks/spot/runs", None).await.json();
    assert_eq!(runs[0]["task"], "regression");
    assert_eq!(runs[0]["eval"]["task"], "regression");
    assert!(runs[0]["best_val_error_px"].as_f64().is_some());
    assert_eq!(runs[0]["best_val_top1"], Value::Null);

    // A frame of the held-out photo: one point, in pixels of the frame.
    let held = std::fs::read(&written[15].path).unwrap();
    let r = raw(
        &app,
        "/api/tasks/spot/runs/1/predict",
        held.clone(),
        "image/jpeg",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    let v = r.json();
    assert_eq!(v["task"], "regression");
    assert_eq!(v["labels"], json!(["marker"]));
    assert_eq!(v["size"], json!([224, 224]));
    assert_eq!(v["probs"], json!([]));
    let p = v["points"][0].as_array().unwrap();
    assert!(p.iter().all(|c| c.as_f64().unwrap().is_finite()), "{v}");

    // The same model in a classification task is refused, with both kinds named.
    task_with(&app, "cls", &["marker"]).await;
    copy_tree(
        &tmp.path().join("studio/spot/runs/1"),
        &tmp.path().join("studio/cls/runs/1"),
    );
    let r = raw(&app, "/api/tasks/cls/runs/1/predict", held, "image/jpeg").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        r.error().contains("regression model") && r.error().contains("classification task"),
        "{}",
        r.error()
    );
    let r = call(&app, "GET", "/api/tasks/cls/runs/1/live", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

/// A request with `headers` and a body.
async fn request(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Resp {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(app, b.body(Body::from(body)).unwrap()).await
}

/// Asserts that an error answer is `application/json` with a non-empty `error` string.
fn assert_json_error(r: &Resp, what: &str) {
    let ct = r
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "{what}: {} answered {ct:?}: {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "{what}: {} body is not JSON ({e}): {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )
    });
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {} has no error string: {v}",
        r.status
    );
}

#[tokio::test]
async fn other_sites_cannot_drive_a_tokenless_studio() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.allowed_hosts = vec!["studio.lan".into()];
    let app = router(cfg);
    task_with(&app, "t", &["c"]).await;
    let dir = tmp.path().join("studio/t/data/c");
    let png = tiny_png();
    let own = "127.0.0.1:8080";

    // DNS rebinding: another site's name in Host is refused, reads and writes alike.
    let r = request(
        &app,
        "GET",
        "/api/tasks",
        &[("host", "evil.example:8080")],
        vec![],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_json_error(&r, "foreign Host");
    assert!(
        r.error().contains("\"evil.example:8080\"") && r.error().contains("--allowed-host"),
        "{}",
        r.error()
    );
    let r = request(
        &app,
        "GET",
        "/",
        &[("host", "localhost.evil.example")],
        vec![],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = request(
        &app,
        "POST",
        "/api/tasks",
        &[
            ("host", "evil.example"),
            ("content-type", "application/json"),
        ],
        br#"{"name": "planted"}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!tmp.path().join("studio/planted").exists());
    // The loopback names (any port: a tunnel may use another one) and the allowed name.
    for host in [
        own,
        "localhost:8080",
        "LocalHost:8080",
        "[::1]:8080",
        "127.0.0.1",
        "localhost:9999",
        "studio.lan",
        "studio.lan:8443",
    ] {
        let r = request(&app, "GET", "/api/tasks", &[("host", host)], vec![]).await;
        assert_eq!(r.status, StatusCode::OK, "{host}: {}", r.error());
    }
    let r = request(&app, "GET", "/", &[("host", "10.1.2.3:8080")], vec![]).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "a LAN address without a token"
    );

    // Cross-site form posts: multipart and url-encoded, told by Origin or by Sec-Fetch-Site.
    let (mp_type, mp_body) = multipart(&[("forged.png", &png)]);
    let upload = "/api/tasks/t/categories/c/images";
    let forms: [(&str, &str, Vec<u8>); 3] = [
        (upload, mp_type.as_str(), mp_body.clone()),
        (
            upload,
            "application/x-www-form-urlencoded",
            b"file=x".to_vec(),
        ),
        (
            "/api/tasks",
            "application/x-www-form-urlencoded",
            b"name=planted".to_vec(),
        ),
    ];
    let foreign: [&[(&str, &str)]; 5] = [
        &[("origin", "http://evil.example")],
        &[
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
        ],
        &[
            ("origin", "http://127.0.0.1:3000"),
            ("sec-fetch-site", "same-site"),
        ],
        &[
            ("sec-fetch-site", "same-site"),
            ("sec-fetch-mode", "navigate"),
        ],
        &[("origin", "null")],
    ];
    for (uri, ct, body) in &forms {
        for extra in foreign {
            let mut h = vec![("host", own), ("content-type", *ct)];
            h.extend_from_slice(extra);
            let r = request(&app, "POST", uri, &h, body.clone()).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri} {ct} {extra:?}");
            assert_json_error(&r, "cross-site form");
            assert!(r.error().contains("another web site"), "{}", r.error());
        }
    }
    // A script's JSON import from another origin (it would need a preflight too).
    let r = request(
        &app,
        "POST",
        "/api/tasks/t/categories/c/import",
        &[
            ("host", own),
            ("origin", "https://evil.example"),
            ("content-type", "application/json"),
        ],
        json!({"path": shared_data().join("hymenoptera/train/ants")})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        listing(&dir).is_empty(),
        "nothing was saved: {:?}",
        listing(&dir)
    );
    assert!(!tmp.path().join("studio/planted").exists());

    // Another site may link to the page (a navigation) but not embed or fetch the studio's
    // resources.
    let nav = [
        ("host", own),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
    ];
    let r = request(&app, "GET", "/", &nav, vec![]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(
        r.headers[header::CONTENT_SECURITY_POLICY],
        "frame-ancestors 'none'"
    );
    for (mode, dest) in [
        ("navigate", "iframe"),
        ("no-cors", "image"),
        ("cors", "empty"),
    ] {
        let h = [
            ("host", own),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", mode),
            ("sec-fetch-dest", dest),
        ];
        let r = request(&app, "GET", "/api/tasks", &h, vec![]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{mode} {dest}");
    }

    // The studio's own page (same origin) and clients that are not browsers (no Origin, no
    // Sec-Fetch-*) work.
    let same: [&[(&str, &str)]; 4] = [
        &[
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ],
        &[("origin", "http://127.0.0.1:8080")],
        &[("sec-fetch-site", "same-origin")],
        &[],
    ];
    for (i, extra) in same.iter().enumerate() {
        let mut h = vec![("host", own), ("content-type", mp_type.as_str())];
        h.extend_from_slice(extra);
        let r = request(&app, "POST", upload, &h, mp_body.clone()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{extra:?}: {}", r.error());
        assert_eq!(r.json()["count"], i + 1);
    }
    // Through the allowed name (a reverse proxy that keeps the browser's Host), and through
    // one that rewrites Host to the studio's address but not Origin.
    for h in [
        [("host", "studio.lan"), ("origin", "https://studio.lan")],
        [("host", own), ("origin", "https://studio.lan")],
    ] {
        let mut h = h.to_vec();
        h.push(("content-type", mp_type.as_str()));
        let r = request(&app, "POST", upload, &h, mp_body.clone()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{h:?}: {}", r.error());
    }
    assert_eq!(listing(&dir).len(), 6);
}

#[tokio::test]
async fn a_studio_with_a_token_answers_any_host_but_not_other_sites() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.token = Some("s3cret".into());
    let app = router(cfg);
    // Other machines reach it by address, host name or mDNS name.
    for host in [
        "192.168.1.50:8080",
        "jetson.local:8080",
        "jetson",
        "[fe80::1]:8080",
    ] {
        let r = request(
            &app,
            "GET",
            "/api/tasks",
            &[("host", host), ("authorization", "Bearer s3cret")],
            vec![],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{host}: {}", r.error());
    }
    // A rebinding page has no token.
    let r = request(
        &app,
        "GET",
        "/api/tasks",
        &[("host", "evil.example")],
        vec![],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_json_error(&r, "no token");
    // The cookie is sent along with requests of the same site, such as another port of the
    // same address: the Origin check refuses them.
    let cookie = ("cookie", "nanoclass_token=s3cret");
    let r = request(
        &app,
        "POST",
        "/api/tasks",
        &[
            ("host", "192.168.1.50:8080"),
            ("origin", "http://192.168.1.50:3000"),
            ("content-type", "application/x-www-form-urlencoded"),
            cookie,
        ],
        b"name=x".to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = request(
        &app,
        "POST",
        "/api/tasks",
        &[
            ("host", "192.168.1.50:8080"),
            ("origin", "http://192.168.1.50:8080"),
            ("sec-fetch-site", "same-origin"),
            ("content-type", "application/json"),
            cookie,
        ],
        br#"{"name": "from-the-phone"}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.error());
}

/// Sends one HTTP/1.1 request to a running studio; the status and the body.
async fn over_tcp(addr: std::net::SocketAddr, head: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let head = head.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text[9..12].parse().unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_running_server_checks_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let local = nanoclass_studio::start(nanoclass_studio::ServeOptions {
        host: "127.0.0.1".into(),
        port: 0,
        config: config(tmp.path()),
    })
    .await
    .unwrap();
    let port = local.addr.port();
    let (status, body) =
        over_tcp(local.addr, "GET /api/tasks HTTP/1.1\r\nHost: evil.example").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("evil.example"), "{body}");
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (status, body) = over_tcp(
            local.addr,
            &format!("GET /api/tasks HTTP/1.1\r\nHost: {host}"),
        )
        .await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    local.task.abort();
    // Bound to every interface (token mode): reached by any name, with the token.
    let open = nanoclass_studio::start(nanoclass_studio::ServeOptions {
        host: "0.0.0.0".into(),
        port: 0,
        config: config(tmp.path()),
    })
    .await
    .unwrap();
    let token = open.token.clone().unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], open.addr.port()));
    let (status, body) = over_tcp(
        addr,
        &format!("GET /api/tasks HTTP/1.1\r\nHost: jetson.local\r\nAuthorization: bearer {token}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = over_tcp(addr, "GET /api/tasks HTTP/1.1\r\nHost: jetson.local").await;
    assert_eq!(status, 401);
    open.task.abort();
}

#[tokio::test]
async fn long_names_are_not_echoed_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let app = router(config(tmp.path()));
    task_with(&app, "t", &["c"]).await;
    let long = "a".repeat(5 * 1024 * 1024);
    let shown = format!("\"{}…\" (5242880 characters)", "a".repeat(80));
    for (method, uri) in [
        ("POST", "/api/tasks"),
        ("POST", "/api/tasks/t/categories"),
        ("PATCH", "/api/tasks/t/categories/c"),
    ] {
        let r = call(&app, method, uri, Some(json!({ "name": long }))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method} {uri}");
        assert!(
            r.body.len() < 1000,
            "{method} {uri}: {} bytes",
            r.body.len()
        );
        assert!(r.error().contains(&shown), "{method} {uri}: {}", r.error());
        assert!(r.error().contains("255"), "the reason stays: {}", r.error());
    }
    // An unknown value that serde echoes.
    let r = call(
        &app,
        "POST",
        "/api/tasks",
        Some(json!({"name": "x", "kind": long})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.len() < 1000, "{} bytes", r.body.len());
    assert!(r.error().contains("(5242880 characters)"), "{}", r.error());
    // Long names in the URL: a task name (400, too long for a folder), an image (404).
    let r = call(
        &app,
        "GET",
        &format!("/api/tasks/{}", "b".repeat(60_000)),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.len() < 1000, "{} bytes", r.body.len());
    assert!(r.error().contains("(60000 characters)"), "{}", r.error());
    let uri = format!(
        "/api/tasks/t/categories/c/images/{}.jpg",
        "b".repeat(60_000)
    );
    let r = call(&app, "GET", &uri, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.len() < 1000, "{} bytes", r.body.len());
    assert!(r.error().contains("(60004 characters)"), "{}", r.error());
}

#[tokio::test]
async fn json_bodies_are_checked_in_order_syntax_content_type_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let app = router(config(tmp.path()));
    let json_ct = [("content-type", "application/json")];
    let r = request(
        &app,
        "POST",
        "/api/tasks",
        &json_ct,
        br#"{"name": "#.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.error()
            .starts_with("the request body is not valid JSON: ")
            && r.error()
                .contains("EOF while parsing a value at line 1 column 9"),
        "{}",
        r.error()
    );
    let r = request(
        &app,
        "POST",
        "/api/tasks",
        &json_ct,
        br#"{"name": 3}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.error()
            .starts_with("the JSON body does not fit this request: name: invalid type"),
        "{}",
        r.error()
    );
    let r = request(&app, "POST", "/api/tasks", &json_ct, br#"{}"#.to_vec()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.error().contains("missing field `name`"), "{}", r.error());
    let r = request(
        &app,
        "POST",
        "/api/tasks",
        &[("content-type", "text/plain")],
        br#"{"name": "x"}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        r.error().contains("Content-Type: application/json"),
        "{}",
        r.error()
    );
    // Path and query parameters of the wrong type name the parameter.
    let r = call(&app, "GET", "/api/tasks/t/runs/abc", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.error(),
        "run \"abc\" in the URL is not a whole number (0, 1, 2, ...)"
    );
    let r = raw(
        &app,
        "/api/tasks/t/runs/1/predict?smoothing=lots",
        tiny_png(),
        "image/png",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.error()
            .starts_with("the URL's query parameters: smoothing"),
        "{}",
        r.error()
    );
    // A method the path does not answer: 405 with `Allow`, both in the header and the message.
    let r = call(&app, "POST", "/api/info", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let allow = r.headers[header::ALLOW].to_str().unwrap().to_string();
    assert!(allow.contains("GET"), "{allow}");
    assert_eq!(
        r.error(),
        format!("POST is not allowed on \"/api/info\"; it answers {allow}")
    );
    assert!(!tmp.path().join("studio/x").exists());
}

#[tokio::test]
async fn every_error_answer_is_json_with_an_error_field() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.max_upload_bytes = 4096;
    let app = router(cfg);
    task_with(&app, "t", &["c"]).await;
    let paths = nanoclass_studio::route_paths();
    assert!(paths.len() >= 30, "{paths:?}");
    let fill = |p: &str, task: &str, number: &str| {
        p.replace("{task}", task)
            .replace("{category}", "c")
            .replace("{image}", "i.jpg")
            .replace("{run}", number)
            .replace("{id}", number)
    };
    let too_big = format!("{{\"name\": \"{}\"}}", "a".repeat(8192)).into_bytes();
    // (what, headers, body): each one wrong in one way.
    type BadBody<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>);
    let bad: Vec<BadBody> = vec![
        ("no body", vec![], vec![]),
        (
            "JSON syntax",
            vec![("content-type", "application/json")],
            b"{\"name\": ".to_vec(),
        ),
        (
            "JSON shape",
            vec![("content-type", "application/json")],
            b"[1]".to_vec(),
        ),
        (
            "not JSON",
            vec![("content-type", "text/plain")],
            b"{\"name\": \"x\"}".to_vec(),
        ),
        (
            "too large",
            vec![("content-type", "application/json")],
            too_big,
        ),
        (
            "other origin",
            vec![
                ("content-type", "application/json"),
                ("origin", "http://evil.example"),
            ],
            b"{\"name\": \"x\"}".to_vec(),
        ),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for path in &paths {
        let mut errors = 0;
        for (task, number) in [("t", "7"), ("t", "x7"), ("no-such-task", "7")] {
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
                // Deleting the task or its category would leave nothing to test.
                if method == "DELETE" && task == "t" {
                    continue;
                }
                let uri = fill(path, task, number);
                let variants = if matches!(method, "GET" | "OPTIONS") {
                    &bad[..1]
                } else {
                    &bad[..]
                };
                for (what, headers, body) in variants {
                    let r = tokio::time::timeout(
                        Duration::from_secs(30),
                        request(&app, method, &uri, headers, body.clone()),
                    )
                    .await
                    .unwrap_or_else(|_| panic!("{method} {uri} ({what}) did not answer"));
                    if r.status.is_success() {
                        continue;
                    }
                    let label = format!("{method} {uri} ({what})");
                    assert_json_error(&r, &label);
                    assert_eq!(r.headers[header::X_FRAME_OPTIONS], "DENY", "{label}");
                    assert!(
                        !r.status.is_server_error(),
                        "{label}: {} {}",
                        r.status,
                        r.error()
                    );
                    seen.insert(r.status.as_u16());
                    errors += 1;
                }
            }
        }
        assert!(errors > 0, "{path}: no bad request was refused");
    }
    for status in [400, 403, 404, 405, 409, 413, 415, 422] {
        assert!(seen.contains(&status), "no {status} among {seen:?}");
    }
    // Unknown paths, and every route without the token of a studio that requires one.
    for uri in [
        "/nope",
        "/api/tasks/t/categories/c/images/i.jpg/more",
        "/api",
    ] {
        let r = call(&app, "GET", uri, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        assert_json_error(&r, uri);
    }
    let mut cfg = config(tmp.path());
    cfg.token = Some("s3cret".into());
    let guarded = router(cfg);
    for path in &paths {
        let uri = fill(path, "t", "7");
        let r = call(&guarded, "GET", &uri, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_json_error(&r, &uri);
    }
}

/// After a full training the studio's memory returns near its idle figure: the training's
/// freed pages go back to the system (a Jetson Nano has 4 GB for everything).
#[tokio::test]
async fn memory_returns_near_idle_after_a_full_training() {
    use nanoclass::memory::resident_bytes;
    let Some(_) = resident_bytes() else {
        return; // no /proc/self/statm: nothing to measure here
    };
    let tmp = tempfile::tempdir().unwrap();
    let app = router(config(tmp.path()));
    task_with(&app, "m", &["ants", "bees"]).await;
    for class in ["ants", "bees"] {
        let r = call(
            &app,
            "POST",
            &format!("/api/tasks/m/categories/{class}/import"),
            Some(json!({"path": shared_data().join("hymenoptera/val").join(class)})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    }
    nanoclass::memory::return_freed_heap();
    let idle = resident_bytes().unwrap();
    // A sampler records the peak while the training runs.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(idle));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(r) = resident_bytes() {
                    peak.fetch_max(r, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let events = train_and_wait(
        &app,
        "m",
        json!({"arch": "resnet18", "weights": "none", "mode": "full", "epochs": 1, "batch_size": 32}),
    )
    .await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(events.last().unwrap()["type"], "done", "{events:?}");
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    // The trim follows the job's last event: wait for it, a few seconds at most.
    let mut after = resident_bytes().unwrap();
    for _ in 0..50 {
        if after < idle + 200 * 1024 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = resident_bytes().unwrap();
    }
    eprintln!(
        "studio RSS: idle {} MiB, training peak {} MiB, after {} MiB",
        idle >> 20,
        peak >> 20,
        after >> 20
    );
    assert!(
        peak > idle + 300 * 1024 * 1024,
        "the training should have held memory: idle {idle}, peak {peak}"
    );
    assert!(
        after < idle + 200 * 1024 * 1024,
        "RSS {} MiB after the training, idle {} MiB (peak {} MiB)",
        after >> 20,
        idle >> 20,
        peak >> 20
    );
}
