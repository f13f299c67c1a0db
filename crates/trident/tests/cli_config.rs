//! One layered configuration for every command: `--config FILE` (TOML keys named as the flags)
//! under `TRIDENT_*` variables under flags, for `trident embed` and `trident serve` as for
//! `trident node` (whose layering the cluster tests cover).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{finish_with_stdin, free_port, stderr, tiny, TRIDENT};
use serde_json::Value;

/// `trident embed` of three texts with the given config file, environment and flags; the
/// output objects.
fn embed(config: &str, envs: &[(&str, &str)], flags: &[&str]) -> Result<Vec<Value>, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("embed.toml");
    std::fs::write(&file, config).unwrap();
    let child = Command::new(TRIDENT)
        .arg("embed")
        .arg("--config")
        .arg(&file)
        .args(flags)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let long = "word ".repeat(40);
    let input = format!("hello world\n{long}\nde trois mots\n");
    let out = finish_with_stdin(child, input.as_bytes());
    if !out.status.success() {
        return Err(stderr(&out));
    }
    Ok(String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect())
}

fn max_tokens(rows: &[Value]) -> u64 {
    rows.iter().map(|r| r["tokens"].as_u64().unwrap()).max().unwrap()
}

#[test]
fn embed_takes_its_settings_from_a_toml_file_under_env_and_flags() {
    let model = tiny().display().to_string();
    let config = format!("model = \"{model}\"\ndense = true\nmax_length = 8\nbatch-tokens = 64\n");
    let rows = embed(&config, &[], &[]).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["dense"].is_array() && r.get("colbert").is_none()), "{rows:?}");
    assert_eq!(max_tokens(&rows), 8, "max_length from the file");
    // The environment beats the file, a flag beats both.
    let rows = embed(&config, &[("TRIDENT_MAX_LENGTH", "16")], &[]).unwrap();
    assert_eq!(max_tokens(&rows), 16, "TRIDENT_MAX_LENGTH over the file");
    let rows = embed(&config, &[("TRIDENT_MAX_LENGTH", "16")], &["--max-length", "12"]).unwrap();
    assert_eq!(max_tokens(&rows), 12, "--max-length over the environment");
    // The placement keys are the same for every command.
    let with_placement = format!("{config}device = \"cpu\"\nworkers = 2\nthreads = 1\n");
    assert_eq!(embed(&with_placement, &[], &[]).unwrap().len(), 3);
}

#[test]
fn a_bad_config_file_is_refused_naming_the_file_and_the_key() {
    let model = tiny().display().to_string();
    let e = embed(&format!("model = \"{model}\"\ncolour = \"red\"\n"), &[], &[]).unwrap_err();
    assert!(e.contains("embed.toml") && e.contains("`colour`"), "{e}");
    let e = embed(&format!("model = \"{model}\"\nworkers = \"many\"\n"), &[], &[]).unwrap_err();
    assert!(e.contains("embed.toml") && e.contains("--workers"), "{e}");
    let e = embed(&format!("model = \"{model}\"\ndevice = \"gpu\"\n"), &[], &[]).unwrap_err();
    assert!(e.contains("--device gpu"), "{e}");
    let e = embed("model = [\n", &[], &[]).unwrap_err();
    assert!(e.contains("embed.toml"), "{e}");
}

#[test]
fn serve_takes_its_settings_from_a_toml_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("serve.toml");
    let port = free_port();
    let model = tiny().display().to_string();
    std::fs::write(
        &file,
        format!(
            "model = \"{model}\"\nport = {port}\napi_key = \"from-file\"\nthreads = 1\n\
             max_inputs = 3\nmodel_name = \"tiny-from-toml\"\n"
        ),
    )
    .unwrap();
    // Killed on drop, so a failed assertion leaves no server behind.
    struct Serve(std::process::Child);
    impl Drop for Serve {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _serve = Serve(
        Command::new(TRIDENT)
            .args(["serve", "--config"])
            .arg(&file)
            .env("TRIDENT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = http.get(url("/health")).send().await.is_ok_and(|r| r.status() == 200);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "serve did not come up on the file's port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let info = http.get(url("/info")).send().await.unwrap();
        assert_eq!(info.status(), 401, "the file's api_key is required");
        let info: Value = http
            .get(url("/info"))
            .bearer_auth("from-file")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(info["model"], "tiny-from-toml", "{info}");
        assert_eq!(info["limits"]["max_inputs"], 3, "{info}");
    });
}
