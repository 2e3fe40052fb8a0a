//! A dev OpenBao of the benchmark's own, with a file audit device (declared in its config:
//! OpenBao refuses audit devices made through the API), so a benchmark can count the requests
//! baofs made. Shared by bench/scale.rs and bench/takeover.rs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// OpenBao requests in a stretch of the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Logins at `auth/kubernetes/login`.
    pub logins: usize,
    /// Reads of `secret/data/<prefix>*`.
    pub reads: usize,
    /// Every other request path, with its count.
    pub other: BTreeMap<String, usize>,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} logins, {} secret reads", self.logins, self.reads)?;
        if !self.other.is_empty() {
            let other: Vec<String> = self.other.iter().map(|(p, n)| format!("{p} {n}")).collect();
            write!(f, ", other: {}", other.join(", "))?;
        }
        Ok(())
    }
}

/// The server; killed when dropped.
pub struct AuditedBao {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    audit: PathBuf,
}

impl Drop for AuditedBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AuditedBao {
    /// Starts `bin server -dev` (root token `root`) on a free loopback port, its config, audit
    /// log and output in `dir`, and waits until it is healthy.
    pub fn start(bin: &str, dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let audit = dir.join("audit.log");
        let config = dir.join("audit.hcl");
        std::fs::write(
            &config,
            format!(
                "audit \"file\" \"bench\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                audit.display()
            ),
        )
        .unwrap();
        let log_path = dir.join("openbao.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(bin)
            .args(["server", "-dev", "-dev-root-token-id=root"])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-config={}", config.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let bao = Self {
            child,
            addr: format!("http://127.0.0.1:{port}"),
            audit,
        };
        let client = reqwest::blocking::Client::new();
        let start = Instant::now();
        let mut delay = Duration::from_millis(10);
        while !client
            .get(format!("{}/v1/sys/health", bao.addr))
            .send()
            .is_ok_and(|r| r.status().as_u16() == 200)
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the audited OpenBao did not start:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            // Back-off between health checks, not synchronisation.
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(200));
        }
        bao
    }

    /// A root-token request that must succeed.
    pub fn call(&self, method: reqwest::Method, path: &str, body: serde_json::Value) {
        let resp = reqwest::blocking::Client::new()
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", "root")
            .json(&body)
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
    }

    /// Where the audit log ends now.
    pub fn offset(&self) -> u64 {
        std::fs::metadata(&self.audit).map(|m| m.len()).unwrap_or(0)
    }

    /// Requests logged after `from` (an [`Self::offset`]; 0: all of them).
    pub fn counts_since(&self, from: u64, prefix: &str) -> Counts {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.audit) {
            f.seek(SeekFrom::Start(from)).unwrap();
            f.read_to_string(&mut text).unwrap();
        }
        let mut c = Counts::default();
        let read_prefix = format!("secret/data/{prefix}");
        for e in text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["type"] == "request")
        {
            let path = e["request"]["path"].as_str().unwrap_or("");
            if path == "auth/kubernetes/login" {
                c.logins += 1;
            } else if path.starts_with(&read_prefix) && e["request"]["operation"] == "read" {
                c.reads += 1;
            } else {
                *c.other.entry(path.to_owned()).or_default() += 1;
            }
        }
        c
    }

    /// Every request logged so far.
    pub fn counts(&self, prefix: &str) -> Counts {
        self.counts_since(0, prefix)
    }
}
