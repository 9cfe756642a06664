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
