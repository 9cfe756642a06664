//! Deployment exports through the real binary: a ResNet-18 run trained on ten real photos,
//! exported as a Triton model repository (its config parsed with Triton's own schema, the
//! `model_config_pb2` of PyPI `tritonclient`) and for DeepStream; `nanoclass verify` passes on
//! both in tract and ONNX Runtime and fails, naming the difference, once one weight of the
//! graph is altered.
//!
//! Needs `python3` (the one on PATH) with `tritonclient[grpc]==2.73.0` (`.ci/run` installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{bin, ok, shared_data};
use prost::Message;
use tract_onnx::pb;

fn fails(out: Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

fn train(root: &Path) -> PathBuf {
    let src = shared_data().join("hymenoptera/train");
    let data = root.join("data");
    for class in ["ants", "bees"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(src.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        std::fs::create_dir_all(data.join(class)).unwrap();
        for f in files.iter().take(5) {
            std::fs::copy(f, data.join(class).join(f.file_name().unwrap())).unwrap();
        }
    }
    let run = root.join("run");
    let out = bin()
        .arg("train")
        .arg(&data)
        .args(["--arch", "resnet18", "--weights", "none", "--epochs", "1"])
        .args(["--batch-size", "4", "--no-feature-cache", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    ok(out, "train");
    run
}

/// Parses `config` with Triton's `ModelConfig` and prints the fields checked.
fn parse_with_triton_schema(config: &Path) -> String {
    let script = r#"
import sys
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
c = text_format.Parse(open(sys.argv[1]).read(), mc.ModelConfig())
i, o = c.input[0], c.output[0]
print(c.name, c.platform, c.max_batch_size, i.name, mc.DataType.Name(i.data_type),
      mc.ModelInput.Format.Name(i.format), list(i.dims), o.name, list(o.dims), o.label_filename,
      c.HasField("dynamic_batching"), mc.ModelInstanceGroup.Kind.Name(c.instance_group[0].kind))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(config)
        .output()
        .expect("python3 on PATH");
    assert!(
        out.status.success(),
        "Triton's schema refuses {} (or tritonclient is missing: \
         `python3 -m pip install tritonclient[grpc]==2.73.0`, as .ci/run does):\n{}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn verify(dir: &Path, runtime: &str) -> Output {
    bin()
        .arg("verify")
        .arg(dir)
        .args(["--runtime", runtime])
        .output()
        .unwrap()
}

/// ONNX Runtime is there, or its absence is allowed (CI's pass without the library).
fn ort_available() -> bool {
    match nanoclass::infer::ort::ort_environment() {
        Ok(_) => true,
        Err(reason) => {
            assert!(
                std::env::var_os("NANOCLASS_REQUIRE_ORT").is_none(),
                "NANOCLASS_REQUIRE_ORT is set, but ONNX Runtime is not available: {reason}"
            );
            false
        }
    }
}

/// Adds `delta` to the first value of the weight of the graph's `Gemm` (the classifier).
fn alter_one_weight(model: &Path, delta: f32) {
    let mut m = pb::ModelProto::decode(std::fs::read(model).unwrap().as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let gemm = g.node.iter().find(|n| n.op_type == "Gemm").unwrap();
    let name = gemm.input[1].clone();
    let t = g.initializer.iter_mut().find(|t| t.name == name).unwrap();
    let v = f32::from_le_bytes(t.raw_data[..4].try_into().unwrap()) + delta;
    t.raw_data[..4].copy_from_slice(&v.to_le_bytes());
    std::fs::write(model, m.encode_to_vec()).unwrap();
}

fn largest_difference(stdout: &str) -> f32 {
    let tail = stdout.split("largest difference ").nth(1).unwrap();
    tail.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn triton_and_deepstream_exports_verify_and_an_altered_weight_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let run = train(tmp.path());
    let repo = tmp.path().join("repo");
    let stdout = ok(
        bin()
            .arg("export")
            .arg(&run)
            .args([
                "--format",
                "triton",
                "--name",
                "hymenoptera",
                "--max-batch",
                "16",
            ])
            .arg("--out")
            .arg(&repo)
            .output()
            .unwrap(),
        "export triton",
    );
    assert!(stdout.contains("2 held-out images"), "{stdout}");
    let model_dir = repo.join("hymenoptera");
    assert_eq!(
        std::fs::read_to_string(model_dir.join("labels.txt")).unwrap(),
        "ants\nbees\n"
    );
    assert!(model_dir.join("1/model.onnx").is_file());
    assert_eq!(
        parse_with_triton_schema(&model_dir.join("config.pbtxt")),
        "hymenoptera onnxruntime_onnx 16 input_0 TYPE_FP32 FORMAT_NCHW [3, 224, 224] \
         output_0 [2] labels.txt True KIND_GPU"
    );
    // --cpu gives KIND_CPU.
    ok(
        bin()
            .arg("export")
            .arg(&run)
            .args(["--format", "triton", "--name", "cpu", "--cpu", "--out"])
            .arg(&repo)
            .output()
            .unwrap(),
        "export triton --cpu",
    );
    assert!(parse_with_triton_schema(&repo.join("cpu/config.pbtxt")).ends_with("KIND_CPU"));

    let ds = tmp.path().join("deepstream");
    let stdout = ok(
        bin()
            .arg("export")
            .arg(&run)
            .args(["--format", "deepstream", "--out"])
            .arg(&ds)
            .output()
            .unwrap(),
        "export deepstream",
    );
    assert!(stdout.contains("net-scale-factor 0.003921569"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(ds.join("labels_deepstream.txt")).unwrap(),
        "ants;bees\n"
    );

    let mut runtimes = vec!["tract"];
    if ort_available() {
        runtimes.push("onnxruntime");
    } else {
        let e = fails(
            verify(&model_dir, "onnxruntime"),
            "verify without ONNX Runtime",
        );
        assert!(e.contains("onnxruntime"), "{e}");
    }
    for runtime in &runtimes {
        for dir in [&model_dir, &ds] {
            let out = ok(verify(dir, runtime), runtime);
            assert!(
                out.contains("2 inputs") && out.trim_end().ends_with("ok"),
                "{out}"
            );
            assert!(largest_difference(&out) <= 1e-4, "{out}");
        }
    }

    // One weight of the classifier moved by 0.5: every probability of an image whose
    // feature 0 is not 0 moves, and verify fails naming the difference.
    alter_one_weight(&model_dir.join("1/model.onnx"), 0.5);
    for runtime in &runtimes {
        let out = verify(&model_dir, runtime);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let e = fails(out, "verify of an altered graph");
        assert!(
            e.contains("does not reproduce nanoclass's outputs")
                && e.contains("> tolerance 1.0e-4"),
            "{e}"
        );
        assert!(largest_difference(&stdout) > 1e-3, "{stdout}");
    }

    // Flags of one format are refused for another.
    let e = fails(
        bin()
            .arg("export")
            .arg(&run)
            .args(["--format", "onnx", "--max-batch", "4"])
            .output()
            .unwrap(),
        "onnx --max-batch",
    );
    assert!(
        e.contains("--max-batch applies to --format triton only"),
        "{e}"
    );
    let e = fails(
        bin()
            .arg("export")
            .arg(&run)
            .args(["--format", "triton", "--name", "a/b"])
            .output()
            .unwrap(),
        "triton bad name",
    );
    assert!(e.contains("`/` is not allowed"), "{e}");
}

/// Runs `script` (a check from an export's README.txt) with `python` on `dir`.
fn python_check(python: &str, script: &str, dir: &Path) -> Output {
    let file = dir.with_extension("check.py");
    std::fs::write(&file, script).unwrap();
    Command::new(python)
        .arg(&file)
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"))
}

/// The studio's download: each bundle is one zip whose entries lie under one folder, holding
/// the export, labels.txt, the parity kit and a README.txt whose checks run as printed. The ONNX
/// and Triton zips pass `nanoclass verify` as they are; the README's ONNX Runtime check passes
/// on the unzipped ONNX bundle and fails once a weight is altered; the README's PyTorch check
/// loads the .pth bundle strictly into torchvision's ResNet-18 and reproduces the kit.
///
/// Needs `python3` on PATH with onnxruntime and numpy, and Debian's `/usr/bin/python3` with
/// python3-torch and python3-torchvision (`.ci/run` installs both).
#[test]
fn export_bundles_hold_kit_and_readme_and_verify_as_zips() {
    use nanoclass::export::Golden;
    use nanoclass::export::bundle::{BundleFormat, CHECK_ONNX_PY, CHECK_PTH_PY, write_bundle};
    let tmp = tempfile::tempdir().unwrap();
    let run = train(tmp.path());
    let out = tmp.path().join("bundles");
    for format in BundleFormat::ALL {
        let f = format.name();
        let zip_path = out.join(format!("ants_bees-{f}.zip"));
        let b = write_bundle(&run, format, "ants_bees", &zip_path).unwrap();
        assert_eq!(b.golden, Golden::Written(2), "{f}");
        let mut archive = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
        let names: Vec<String> = archive
            .file_names()
            .map(|n| n.unwrap().into_owned())
            .collect();
        assert_eq!(names, b.entries, "{f}");
        let kit = match format {
            BundleFormat::Triton => "ants_bees/model_repository/ants_bees",
            _ => "ants_bees",
        };
        let model = match format {
            BundleFormat::Onnx => "model.onnx",
            BundleFormat::Triton => "1/model.onnx",
            BundleFormat::Pth => "model.pth",
        };
        for want in [
            "ants_bees/README.txt".to_string(),
            format!("{kit}/{model}"),
            format!("{kit}/labels.txt"),
            format!("{kit}/golden/manifest.json"),
            format!("{kit}/golden/0.bin"),
            format!("{kit}/golden/1.bin"),
        ] {
            assert!(names.contains(&want), "{f}: no {want} in {names:?}");
        }
        assert!(
            names.iter().all(|n| n.starts_with("ants_bees/")),
            "{names:?}"
        );
        // Only the zip is left where it was written: the staging folder is gone.
        let left: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".zip"))
            .collect();
        assert!(left.is_empty(), "{left:?}");

        let unzipped = tmp.path().join(format!("unzipped-{f}"));
        archive.extract(&unzipped).unwrap();
        let readme = std::fs::read_to_string(unzipped.join("ants_bees/README.txt")).unwrap();
        assert!(
            readme.contains("[batch, 3, 224, 224] float32, NCHW, RGB")
                && readme.contains("ants, bees")
                && readme.contains("mean [0.485,0.456,0.406]"),
            "{readme}"
        );
        let dir = unzipped.join(kit);
        match format {
            BundleFormat::Onnx | BundleFormat::Triton => {
                let indented: String = CHECK_ONNX_PY
                    .lines()
                    .map(|l| format!("    {l}\n"))
                    .collect();
                assert!(
                    readme.contains(&indented),
                    "{f}: README lacks the check:\n{readme}"
                );
                let stdout = ok(verify(&zip_path, "tract"), "verify zip");
                assert!(
                    stdout.contains(&format!(
                        "ants_bees-{f}.zip/{kit}/{model} on tract: 2 inputs"
                    )) && stdout.trim_end().ends_with("ok"),
                    "{stdout}"
                );
                let py = ok(
                    python_check("python3", CHECK_ONNX_PY, &dir),
                    "README's ONNX check",
                );
                assert!(py.starts_with("largest difference"), "{py}");
            }
            BundleFormat::Pth => {
                assert!(
                    readme.contains("torchvision.models.resnet18(num_classes=2)"),
                    "{readme}"
                );
                let e = fails(verify(&zip_path, "tract"), "verify of a .pth bundle");
                assert!(
                    e.contains("PyTorch state dict") && e.contains("README.txt"),
                    "{e}"
                );
                let py = ok(
                    python_check("/usr/bin/python3", CHECK_PTH_PY, &dir),
                    "README's PyTorch check (Debian python3-torch, python3-torchvision)",
                );
                assert!(py.starts_with("largest difference"), "{py}");
            }
        }
    }
    // docs/deploy.md shows the same check.
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/deploy.md");
    assert!(
        std::fs::read_to_string(docs)
            .unwrap()
            .contains(CHECK_ONNX_PY)
    );
    // The README's ONNX check fails on a graph whose classifier weight moved.
    let dir = tmp.path().join("unzipped-onnx/ants_bees");
    alter_one_weight(&dir.join("model.onnx"), 0.5);
    let out = python_check("python3", CHECK_ONNX_PY, &dir);
    assert!(!out.status.success(), "the check passed an altered graph");
    // A zip without a kit is refused by name.
    let empty = tmp.path().join("empty.zip");
    let mut w = zip::ZipWriter::new(std::fs::File::create(&empty).unwrap());
    w.start_file(
        "a.txt",
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
    )
    .unwrap();
    w.finish().unwrap();
    let e = fails(verify(&empty, "tract"), "verify of a zip without a kit");
    assert!(e.contains("empty.zip: no parity kit"), "{e}");
}

/// Stops the Triton server with SIGTERM (PyTriton then stops its tritonserver child) and waits.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// A real Triton Inference Server, tritonserver 2.51 as PyPI `nvidia-pytriton==0.7.0` bundles it
/// (CPU; its one backend, `python`, runs the exported `1/model.onnx` in onnxruntime with the
/// names and shapes of the exported `config.pbtxt`; scripts/triton_serve.py), serves two Triton
/// exports of one run, one with a weight altered. `nanoclass verify --runtime triton-url` passes
/// on the faithful one over Triton's HTTP API and fails on the altered one; a URL where no server
/// listens is an error naming it.
///
/// Needs the PyTriton venv at `$NANOCLASS_PYTRITON_PYTHON` (default
/// `/opt/nanoclass-pytriton/bin/python`; `.ci/run` makes it).
#[test]
fn a_triton_server_serves_the_export_and_verify_checks_its_answers() {
    let python = std::env::var("NANOCLASS_PYTRITON_PYTHON")
        .unwrap_or_else(|_| "/opt/nanoclass-pytriton/bin/python".to_string());
    assert!(
        Path::new(&python).is_file(),
        "no PyTriton venv at {python}: make it with `/usr/bin/python3 -m venv \
         /opt/nanoclass-pytriton && /opt/nanoclass-pytriton/bin/pip install \
         nvidia-pytriton==0.7.0 onnxruntime==1.31.1 'numpy<2'` (.ci/run does), or set \
         NANOCLASS_PYTRITON_PYTHON"
    );
    let tmp = tempfile::tempdir().unwrap();
    let run = train(tmp.path());
    let repo = tmp.path().join("repo");
    for name in ["faithful", "altered"] {
        ok(
            bin()
                .arg("export")
                .arg(&run)
                .args(["--format", "triton", "--cpu", "--name", name, "--out"])
                .arg(&repo)
                .output()
                .unwrap(),
            "export triton",
        );
    }
    alter_one_weight(&repo.join("altered/1/model.onnx"), 0.5);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/triton_serve.py");
    let log = std::fs::File::create(tmp.path().join("triton.log")).unwrap();
    let mut child = Command::new(&python)
        .arg(&script)
        .args(["--http-port", &port.to_string()])
        .arg(repo.join("faithful"))
        .arg(repo.join("altered"))
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let ready = rx.recv_timeout(std::time::Duration::from_secs(120));
    assert_eq!(
        ready.as_deref().ok(),
        Some("ready"),
        "Triton did not start: {}",
        std::fs::read_to_string(tmp.path().join("triton.log")).unwrap_or_default()
    );
    let url = format!("http://127.0.0.1:{port}");
    let verify_at = |name: &str, url: &str| {
        bin()
            .arg("verify")
            .arg(repo.join(name))
            .args(["--runtime", "triton-url", url])
            .output()
            .unwrap()
    };
    let out = ok(verify_at("faithful", &url), "verify on Triton");
    assert!(
        out.contains("faithful/1/model.onnx on triton: 2 inputs") && out.trim_end().ends_with("ok"),
        "{out}"
    );
    assert!(largest_difference(&out) <= 1e-4, "{out}");
    let altered = verify_at("altered", &url);
    let stdout = String::from_utf8_lossy(&altered.stdout).to_string();
    let e = fails(altered, "verify of an altered graph on Triton");
    assert!(
        e.contains("does not reproduce nanoclass's outputs on triton"),
        "{e}"
    );
    assert!(largest_difference(&stdout) > 1e-3, "{stdout}");
    drop(server);
    // The server is gone: the error names the URL.
    let e = fails(verify_at("faithful", &url), "verify with no server");
    assert!(
        e.contains(&format!("Triton at {url}/v2/models/faithful/infer")),
        "{e}"
    );
}
