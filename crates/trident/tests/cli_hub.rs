//! `--model <hub id>`: files are downloaded with hf-hub from `$HF_ENDPOINT` into `$HF_HOME`.
//! A small HTTP server on loopback plays the hub, serving the tiny fixture (without
//! `model.safetensors`, so the `pytorch_model.bin` fallback is taken).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use common::{finish_with_stdin, tiny, TRIDENT};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves `GET /test-org/tiny-m3/resolve/main/<file>` (with `Range: bytes=a-b`) from `dir`,
/// with the headers hf-hub reads; records every requested path.
fn serve(dir: PathBuf, hidden: &'static [&'static str]) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let _ = answer(conn, &dir, hidden, &log2);
        }
    });
    (port, log)
}

fn answer(
    mut conn: TcpStream,
    dir: &Path,
    hidden: &[&str],
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range = Some(v.trim().to_string());
        }
    }
    log.lock().unwrap().push(path.clone());
    let file = path.strip_prefix("/test-org/tiny-m3/resolve/main/").unwrap_or("");
    let body = match std::fs::read(dir.join(file)) {
        Ok(b) if !file.is_empty() && !file.contains('/') && !hidden.contains(&file) => b,
        _ => {
            let msg = "Entry not found";
            return write!(
                conn,
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
                msg.len()
            );
        }
    };
    let size = body.len();
    let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
        Some((a, b)) => {
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = if b.is_empty() { size - 1 } else { b.parse().unwrap() };
            (a, b.min(size - 1))
        }
        None => (0, size - 1),
    };
    let part = &body[start..=end];
    write!(
        conn,
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{size}\r\n\
         ETag: \"etag-{file}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
        part.len()
    )?;
    conn.write_all(part)?;
    conn.flush()
}

/// Runs trident with `args`, the hub at `endpoint` and its cache in `home`, `input` on stdin.
fn with_hub(args: &[&str], endpoint: &str, home: &Path, input: &[u8]) -> Output {
    let child = Command::new(TRIDENT)
        .args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish_with_stdin(child, input)
}

fn score(model: &str, endpoint: &str, home: &Path) -> Output {
    let pair = b"{\"query\": \"apple banana\", \"passage\": \"apple apple apple banana\"}\n";
    with_hub(&["score", "--model", model, "--pairs", "-"], endpoint, home, pair)
}

#[test]
fn hub_id_is_downloaded_and_gives_the_same_scores_as_the_directory() {
    let (port, log) = serve(tiny(), &["model.safetensors"]);
    let endpoint = format!("http://127.0.0.1:{port}");
    let home = tempfile::tempdir().unwrap();

    let local = score(tiny().to_str().unwrap(), &endpoint, home.path());
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    assert!(log.lock().unwrap().is_empty(), "a local directory needs no download");

    let hub = score("test-org/tiny-m3", &endpoint, home.path());
    assert!(hub.status.success(), "{}", String::from_utf8_lossy(&hub.stderr));
    assert_eq!(String::from_utf8_lossy(&hub.stdout), String::from_utf8_lossy(&local.stdout));
    let requested = log.lock().unwrap().clone();
    for f in [
        "config.json",
        "tokenizer.json",
        "colbert_linear.pt",
        "sparse_linear.pt",
        "pytorch_model.bin",
    ] {
        assert!(requested.iter().any(|p| p.ends_with(f)), "{f} not requested: {requested:?}");
    }

    // Second run: everything comes from the cache.
    let n = log.lock().unwrap().len();
    let again = score("test-org/tiny-m3", &endpoint, home.path());
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(again.stdout, hub.stdout);
    let after: Vec<String> = log.lock().unwrap()[n..].to_vec();
    assert!(after.iter().all(|p| p.ends_with("model.safetensors")), "re-downloaded: {after:?}");
}

#[test]
fn hub_repo_without_a_head_file_fails_naming_it() {
    let (port, _log) = serve(tiny(), &["colbert_linear.pt"]);
    let home = tempfile::tempdir().unwrap();
    let out = score("test-org/tiny-m3", &format!("http://127.0.0.1:{port}"), home.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("colbert_linear.pt") && err.contains("test-org/tiny-m3"), "{err}");
}

/// `embed` resolves a hub id as `score` does, and gives the directory's output.
#[test]
fn embed_takes_a_hub_id() {
    let (port, _log) = serve(tiny(), &["model.safetensors"]);
    let endpoint = format!("http://127.0.0.1:{port}");
    let home = tempfile::tempdir().unwrap();
    let docs = b"{\"id\": \"a\", \"text\": \"apple banana\"}\n{\"id\": 7, \"text\": \"pear\"}\n";
    let embed = |model: &str| {
        with_hub(&["embed", "--model", model, "--threads", "1"], &endpoint, home.path(), docs)
    };
    let local = embed(tiny().to_str().unwrap());
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let hub = embed("test-org/tiny-m3");
    assert!(hub.status.success(), "{}", String::from_utf8_lossy(&hub.stderr));
    assert_eq!(String::from_utf8_lossy(&hub.stdout), String::from_utf8_lossy(&local.stdout));
    assert_eq!(String::from_utf8_lossy(&local.stdout).lines().count(), 2);
}
