//! Device placement flags (`--device`, `--devices`, `--workers`) of `trident embed` and
//! `trident node`: bad lists fail at once (before the model loads) with a message naming the
//! flag; on a machine without CUDA, asking for a GPU is a clear error, never a CPU fallback.

mod common;

use std::process::{Command, Output};

use common::{stderr, tiny, TRIDENT};

fn trident(args: &[&str]) -> Output {
    Command::new(TRIDENT).args(args).env("TRIDENT_LOG", "warn").output().unwrap()
}

#[test]
fn bad_device_lists_fail_before_loading_the_model() {
    // The model path does not exist: the placement error must come first. Exit code 2 is
    // trident's own usage error; `None` means clap's (any non-zero code).
    let cases: [(&[&str], Option<i32>, &str); 6] = [
        (&["--devices", "0,1,0", "--input", "-"], Some(2), "device 0 twice"),
        (&["--device", "tpu:0"], Some(2), "--device tpu:0"),
        (&["--device", "cuda:0", "--devices", "1"], None, "--devices"),
        (&["--devices", "x"], None, "--devices"),
        (&["--precision", "int4"], None, "--precision"),
        (&["--workers", "0"], Some(2), "--workers"),
    ];
    for (flags, code, needle) in cases {
        let mut args = vec!["embed", "--model", "/no/such/model"];
        args.extend_from_slice(flags);
        let out = trident(&args);
        match code {
            Some(c) => assert_eq!(out.status.code(), Some(c), "{flags:?}: {}", stderr(&out)),
            None => assert_ne!(out.status.code(), Some(0), "{flags:?}"),
        }
        assert!(stderr(&out).contains(needle), "{flags:?}: {}", stderr(&out));
    }
}

#[test]
fn gpu_placement_without_cuda_is_a_clear_error() {
    if trident_cuda::cuda_available() {
        eprintln!("skipped: this machine has CUDA; tests/gpu.rs covers the GPU path");
        return;
    }
    let m = tiny();
    let m = m.to_str().unwrap();
    let out = trident(&["embed", "--model", m, "--devices", "0,1", "--input", "/dev/null"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no CUDA driver or device"), "{}", stderr(&out));
    assert!(stderr(&out).contains("[0, 1]"), "{}", stderr(&out));

    // `trident node --devices 0` takes the same path (no broker is contacted before it fails).
    let out = trident(&[
        "node",
        "--model",
        m,
        "--brokers",
        "127.0.0.1:1",
        "--group",
        "g",
        "--input-topic",
        "in",
        "--output-topic",
        "out",
        "--devices",
        "0",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("no CUDA driver or device"), "{}", stderr(&out));
}
