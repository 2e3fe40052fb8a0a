//! Test harness: environment checks, an OpenBao HTTP client, temp dirs, SPC files, the RAII
//! `Mounted` guard around a real `baofs mount` process, mountinfo inspection and polling helpers.
//!
//! Nothing here sleeps to synchronise: every wait is a poll of an observable condition (or a
//! blocking read of the process's stdout) with a deadline.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// How long `baofs mount` may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `baofs` may take to exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `baofs` may take to fail on bad input (an unreachable OpenBao is retried for a
/// while before giving up).
pub const FAIL_TIMEOUT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Environment

/// What every test needs: the OpenBao server started by `scripts/test.sh`.
pub struct Ctx {
    /// The OpenBao HTTP client (root token).
    pub bao: Bao,
}

/// Checks the environment. Returns `None` (the test returns early) only when `BAOFS_SKIP_FUSE=1`;
/// otherwise a missing prerequisite fails the test.
pub fn setup() -> Option<Ctx> {
    if std::env::var("BAOFS_SKIP_FUSE").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: BAOFS_SKIP_FUSE=1 (real-kernel FUSE tests not run)");
        return None;
    }
    let uid = std::fs::metadata("/proc/self")
        .expect("stat /proc/self")
        .uid();
    assert_eq!(
        uid, 0,
        "the FUSE integration tests must run as root: run `sudo scripts/test.sh` \
         (or set BAOFS_SKIP_FUSE=1 to skip them explicitly)"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: load the fuse module (modprobe fuse), or set BAOFS_SKIP_FUSE=1 \
         to skip the FUSE tests explicitly"
    );
    let addr = std::env::var("BAOFS_TEST_BAO_ADDR").unwrap_or_else(|_| {
        panic!(
            "BAOFS_TEST_BAO_ADDR is not set: run the tests with `scripts/test.sh` (it installs \
             and starts OpenBao), or set BAOFS_SKIP_FUSE=1 to skip the FUSE tests"
        )
    });
    let token = std::env::var("BAOFS_TEST_BAO_TOKEN").unwrap_or_else(|_| {
        panic!("BAOFS_TEST_BAO_TOKEN is not set: run the tests with `scripts/test.sh`")
    });
    Some(Ctx {
        bao: Bao::new(&addr, &token),
    })
}

/// A name unique to this test process and call: secret paths, SPC names, temp dirs.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// OpenBao client

/// A minimal OpenBao HTTP client for test setup.
#[derive(Clone)]
pub struct Bao {
    /// `http://127.0.0.1:PORT`
    pub addr: String,
    /// Root token.
    pub token: String,
    http: reqwest::blocking::Client,
}

impl Bao {
    /// A client for `addr` with `token`.
    pub fn new(addr: &str, token: &str) -> Self {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("build HTTP client");
        Self {
            addr: addr.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        }
    }

    /// Sends `method /v1/<path>` with an optional JSON body and `token` (if any); returns the
    /// status and the JSON body (`Null` when empty or not JSON).
    pub fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}/v1/{}", self.addr, path.trim_start_matches('/'));
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("{method} {url}: {e} (is OpenBao running?)"));
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, value)
    }

    /// `call_with` using the root token.
    pub fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.call_with(method, path, body, Some(&self.token))
    }

    /// Like `call`, but panics unless the status is 2xx.
    pub fn ok(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Value {
        let (status, value) = self.call(method.clone(), path, body);
        assert!(
            (200..300).contains(&status),
            "OpenBao {method} {path} answered {status}: {value}"
        );
        value
    }

    /// Writes a KV v2 secret at `secret/data/<name>`; returns its new version.
    pub fn kv2_put(&self, name: &str, data: Value) -> u64 {
        let v = self.ok(
            reqwest::Method::POST,
            &format!("secret/data/{name}"),
            Some(&json!({ "data": data })),
        );
        v["data"]["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("KV v2 write of {name} returned no version: {v}"))
    }

    /// Writes a KV v1 secret at `kv1/<name>`.
    pub fn kv1_put(&self, name: &str, data: Value) {
        self.ok(reqwest::Method::POST, &format!("kv1/{name}"), Some(&data));
    }
}

// ---------------------------------------------------------------------------------------------
// Temp dirs

/// A fresh directory under the system temp dir, removed on drop unless something is still
/// mounted below it (then it is left alone so nothing is deleted through a mount).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/baofs-<prefix>-<unique>`.
    pub fn new(prefix: &str) -> Self {
        let base = std::env::temp_dir()
            .canonicalize()
            .expect("canonicalize temp dir");
        let safe: String = prefix
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = base.join(unique(&format!("baofs-{safe}")));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates (and returns) a subdirectory.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).expect("create subdir");
        p
    }

    /// Writes a file below the directory, returns its path.
    pub fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, content).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if mounts_under(&self.path).is_empty() {
            let _ = std::fs::remove_dir_all(&self.path);
        } else {
            eprintln!(
                "harness: leaving {} in place: something is still mounted below it",
                self.path.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SecretProviderClass files

/// One entry of the SPC's `objects` parameter.
#[derive(Clone, Debug)]
pub struct Obj {
    /// `objectName`
    pub name: String,
    /// `secretPath`
    pub path: String,
    /// `secretKey`
    pub key: Option<String>,
    /// `filePermission`, written unquoted as upstream examples do (e.g. `0600`).
    pub perm: Option<String>,
    /// `encoding`
    pub encoding: Option<String>,
}

/// `Obj` with just name, path and key.
pub fn obj(name: &str, path: &str, key: Option<&str>) -> Obj {
    Obj {
        name: name.to_string(),
        path: path.to_string(),
        key: key.map(str::to_string),
        perm: None,
        encoding: None,
    }
}

impl Obj {
    /// Sets `filePermission`.
    pub fn perm(mut self, p: &str) -> Self {
        self.perm = Some(p.to_string());
        self
    }

    /// Sets `encoding`.
    pub fn encoding(mut self, e: &str) -> Self {
        self.encoding = Some(e.to_string());
        self
    }
}

/// Renders the `objects` YAML string (a list), indented by `indent` spaces.
pub fn objects_yaml(objects: &[Obj], indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut s = String::new();
    for o in objects {
        let _ = writeln!(s, "{pad}- objectName: \"{}\"", o.name);
        let _ = writeln!(s, "{pad}  secretPath: \"{}\"", o.path);
        if let Some(k) = &o.key {
            let _ = writeln!(s, "{pad}  secretKey: \"{k}\"");
        }
        if let Some(p) = &o.perm {
            let _ = writeln!(s, "{pad}  filePermission: {p}");
        }
        if let Some(e) = &o.encoding {
            let _ = writeln!(s, "{pad}  encoding: \"{e}\"");
        }
    }
    s
}

/// A complete SPC YAML with provider `openbao`, `vaultAddress` = `addr`, role `role`.
pub fn spc_yaml(name: &str, addr: &str, role: &str, objects: &[Obj]) -> String {
    spc_yaml_with(name, addr, role, &[], objects)
}

/// `spc_yaml` with further `parameters` entries (written as quoted strings).
pub fn spc_yaml_with(
    name: &str,
    addr: &str,
    role: &str,
    params: &[(&str, &str)],
    objects: &[Obj],
) -> String {
    let mut extra = String::new();
    for (k, v) in params {
        let _ = writeln!(extra, "    {k}: \"{v}\"");
    }
    format!(
        "apiVersion: secrets-store.csi.x-k8s.io/v1\n\
         kind: SecretProviderClass\n\
         metadata:\n  name: {name}\n  namespace: baofs-test\n\
         spec:\n  provider: openbao\n  parameters:\n    vaultAddress: \"{addr}\"\n    roleName: \"{role}\"\n{extra}    objects: |\n{}",
        objects_yaml(objects, 6)
    )
}

// ---------------------------------------------------------------------------------------------
// mountinfo

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug)]
pub struct MountEntry {
    /// Mount point (unescaped).
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `fuse.baofs`.
    pub fstype: String,
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let n = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// All mounts of this mount namespace.
pub fn mounts() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let fstype = post.split(' ').next()?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape_mountinfo(pre.get(4)?)),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

/// Mounts at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<MountEntry> {
    mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect()
}

/// Mounts exactly at `path`.
pub fn mounts_at(path: &Path) -> Vec<MountEntry> {
    mounts()
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect()
}

/// Lazily unmounts everything at or below `dir` (deepest first); returns what was found.
pub fn force_unmount_under(dir: &Path) -> Vec<MountEntry> {
    let mut found = mounts_under(dir);
    found.sort_by_key(|m| std::cmp::Reverse(m.mount_point.as_os_str().len()));
    for m in &found {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&m.mount_point)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    found
}

/// Pids of processes (other than us) whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Signals and polling

/// Sends `sig` to `pid`.
#[allow(unsafe_code)]
pub fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a child we spawned and have
    // not yet reaped, so the pid cannot have been reused.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        eprintln!(
            "harness: kill({pid}, {sig}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn poll_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut delay = Duration::from_millis(1);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        // Back-off between polls of an observable condition; not a synchronisation sleep.
        thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit, up to `timeout`. Returns `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(e) => panic!("waiting for child: {e}"),
        }
        if start.elapsed() >= timeout {
            return None;
        }
        thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Running baofs

/// The `baofs` binary under test.
pub fn baofs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_baofs")
}

/// Options for one `baofs mount` run.
pub struct MountOpts {
    /// SPC YAML text (written to `<dir>/spc.yaml`).
    pub spc: String,
    /// Token for `--token-file` (None: no --token-file).
    pub token: Option<String>,
    /// JWT for `--jwt-file`.
    pub jwt: Option<String>,
    /// `--rotation-poll-interval`.
    pub interval: Option<String>,
    /// Further arguments.
    pub extra: Vec<String>,
    /// Override `--target` (default: a fresh `<dir>/target`).
    pub target: Option<PathBuf>,
    /// Override `--state-dir` (default: a fresh `<dir>/state`), e.g. to share it.
    pub state: Option<PathBuf>,
    /// Environment for the process (BAO_*/VAULT_* are otherwise removed).
    pub env: Vec<(String, String)>,
}

impl MountOpts {
    /// SPC text with the root token and the given poll interval.
    pub fn new(ctx: &Ctx, spc: String) -> Self {
        Self {
            spc,
            token: Some(ctx.bao.token.clone()),
            jwt: None,
            interval: Some("2m".to_string()),
            extra: Vec::new(),
            target: None,
            state: None,
            env: Vec::new(),
        }
    }

    /// Uses `dir` as `--state-dir`.
    pub fn state(mut self, dir: &Path) -> Self {
        self.state = Some(dir.to_owned());
        self
    }

    /// Sets `--rotation-poll-interval`.
    pub fn interval(mut self, d: &str) -> Self {
        self.interval = Some(d.to_string());
        self
    }

    /// Appends arguments.
    pub fn args(mut self, a: &[&str]) -> Self {
        self.extra.extend(a.iter().map(|s| s.to_string()));
        self
    }
}

/// Everything a spawned `baofs mount` needs on disk.
struct Prepared {
    dir: TempDir,
    target: PathBuf,
    state: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn prepare(label: &str, opts: &MountOpts) -> Prepared {
    let dir = TempDir::new(label);
    let target = match &opts.target {
        Some(t) => t.clone(),
        None => dir.subdir("target"),
    };
    let state = match &opts.state {
        Some(s) => s.clone(),
        None => dir.subdir("state"),
    };
    let spc = dir.write("spc.yaml", &opts.spc);
    let mut args: Vec<String> = vec![
        "mount".into(),
        "--spc".into(),
        spc.display().to_string(),
        "--target".into(),
        target.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
    ];
    if let Some(t) = &opts.token {
        let f = dir.write("token", t);
        args.push("--token-file".into());
        args.push(f.display().to_string());
    }
    if let Some(j) = &opts.jwt {
        let f = dir.write("jwt", j);
        args.push("--jwt-file".into());
        args.push(f.display().to_string());
    }
    if let Some(i) = &opts.interval {
        args.push("--rotation-poll-interval".into());
        args.push(i.clone());
    }
    args.extend(opts.extra.iter().cloned());
    Prepared {
        dir,
        target,
        state,
        args,
        env: opts.env.clone(),
    }
}

fn spawn(p: &Prepared) -> Child {
    let mut cmd = Command::new(baofs_bin());
    cmd.args(&p.args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BAO_") || k.starts_with("VAULT_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(p.env.iter().map(|(k, v)| (k, v)))
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn baofs")
}

/// Collects a pipe into a shared string on a thread.
fn collect<R: Read + Send + 'static>(r: R) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b2 = Arc::clone(&buf);
    thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => b2.lock().expect("stderr buffer lock").push_str(&line),
            }
        }
    });
    buf
}

/// Waits (bounded) until the collector thread of `buf` has seen EOF, i.e. the process and
/// everything holding its pipe has exited; returns the collected text.
fn drained(buf: &Arc<Mutex<String>>, timeout: Duration) -> String {
    let start = Instant::now();
    while Arc::strong_count(buf) > 1 && start.elapsed() < timeout {
        thread::sleep(Duration::from_millis(2));
    }
    buf.lock().expect("output buffer lock").clone()
}

/// A running `baofs mount`. Dropping it sends SIGTERM, waits, and lazily unmounts anything
/// left (reporting it on stderr); call [`Mounted::stop`] in the test to assert a clean exit.
pub struct Mounted {
    child: Option<Child>,
    /// The mount target.
    pub target: PathBuf,
    /// The `--state-dir`.
    pub state: PathBuf,
    stdout_lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Holds target, state dir, SPC and credential files; removed on drop.
    _dir: TempDir,
}

impl Mounted {
    /// Spawns `baofs mount` and waits for `baofs: mounted <target>`. Panics (with stderr) if
    /// the process exits or the line does not come within [`READY_TIMEOUT`].
    pub fn start(opts: MountOpts) -> Self {
        Self::try_start(opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `start`, but returns the failure (after cleaning up) instead of panicking.
    pub fn try_start(opts: MountOpts) -> Result<Self, String> {
        let p = prepare("mnt", &opts);
        let mut child = spawn(&p);
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = collect(child.stderr.take().expect("stderr piped"));
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut m = Mounted {
            child: Some(child),
            target: p.target,
            state: p.state,
            stdout_lines: rx,
            stderr,
            _dir: p.dir,
        };
        let expected = format!("baofs: mounted {}", m.target.display());
        match m.stdout_lines.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line == expected => Ok(m),
            Ok(line) => Err(format!(
                "baofs printed {line:?} instead of {expected:?}; stderr:\n{}",
                m.stderr()
            )),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "baofs did not print {expected:?} within {READY_TIMEOUT:?}; stderr:\n{}",
                m.stderr()
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = m.child.as_mut().and_then(|c| wait_timeout(c, EXIT_TIMEOUT));
                Err(format!(
                    "baofs exited ({status:?}) without printing {expected:?}; stderr:\n{}",
                    drained(&m.stderr, EXIT_TIMEOUT)
                ))
            }
        }
    }

    /// Path of `name` inside the mount.
    pub fn path(&self, name: &str) -> PathBuf {
        self.target.join(name)
    }

    /// Reads `name` from the mount.
    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name))
            .unwrap_or_else(|e| panic!("read {}: {e}", self.path(name).display()))
    }

    /// Reads `name` as UTF-8.
    pub fn read_string(&self, name: &str) -> String {
        String::from_utf8(self.read(name)).expect("file content is UTF-8")
    }

    /// What the process printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Sends `sig` and waits (with a deadline) for the process to exit. Asserts the exit was
    /// clean (status 0), that nothing is left mounted at the target or below the state dir,
    /// and that stdout had nothing but the ready line. Returns the exit status.
    pub fn stop_with(mut self, sig: libc::c_int) -> ExitStatus {
        let mut child = self.child.take().expect("not stopped yet");
        signal(child.id(), sig);
        let status = wait_timeout(&mut child, EXIT_TIMEOUT);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let left = self.cleanup_mounts();
        let stderr = drained(&self.stderr, EXIT_TIMEOUT);
        let status = status.unwrap_or_else(|| {
            panic!(
                "baofs did not exit within {EXIT_TIMEOUT:?} after signal {sig}; stderr:\n{stderr}"
            )
        });
        assert!(
            left.is_empty(),
            "mounts left after baofs exited: {left:?}; stderr:\n{stderr}"
        );
        assert!(
            status.success(),
            "baofs exited with {status} after signal {sig}; stderr:\n{stderr}"
        );
        let extra: Vec<String> = self.stdout_lines.try_iter().collect();
        assert!(
            extra.is_empty(),
            "baofs printed more than the ready line on stdout: {extra:?}"
        );
        status
    }

    /// SIGKILL, as a crash or an OOM kill would: waits for the exit and cleans up nothing. The
    /// dead mounts stay; the returned guard keeps the temp dir (and the target) until dropped.
    pub fn kill_hard(mut self) -> (PathBuf, TempDir) {
        let mut child = self.child.take().expect("not stopped yet");
        signal(child.id(), libc::SIGKILL);
        if wait_timeout(&mut child, EXIT_TIMEOUT).is_none() {
            panic!("baofs did not die within {EXIT_TIMEOUT:?} of SIGKILL");
        }
        let dir = std::mem::replace(&mut self._dir, TempDir::new("killed-placeholder"));
        (self.target.clone(), dir)
    }

    /// `stop_with(SIGTERM)`.
    pub fn stop(self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Lazily unmounts whatever is left at the target or under the state dir; returns it.
    fn cleanup_mounts(&self) -> Vec<MountEntry> {
        let mut left = force_unmount_under(&self.state);
        if !self.target.starts_with(&self.state) {
            left.extend(force_unmount_under(&self.target));
        }
        left
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), libc::SIGTERM);
        if wait_timeout(&mut child, EXIT_TIMEOUT).is_none() {
            eprintln!("harness: baofs ignored SIGTERM; killing it");
            let _ = child.kill();
            let _ = child.wait();
        }
        let left = self.cleanup_mounts();
        if !left.is_empty() {
            eprintln!("harness: lazily unmounted leftovers: {left:?}");
        }
    }
}

/// The outcome of a `baofs mount` that was expected to fail.
pub struct Failure {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything on stderr.
    pub stderr: String,
    /// Everything on stdout.
    pub stdout: String,
    /// How long the process ran.
    pub took: Duration,
}

/// Runs `baofs mount` expecting it to fail: asserts a non-zero exit within [`EXIT_TIMEOUT`],
/// nothing mounted at the target or under the state dir, no stdout ready line, and no process
/// left that mentions the run's temp dir. Returns the output for further checks.
pub fn mount_expect_failure(label: &str, opts: MountOpts) -> Failure {
    let p = prepare(label, &opts);
    let before_at_target = mounts_under(&p.target).len();
    let mut child = spawn(&p);
    let stdout = collect(child.stdout.take().expect("stdout piped"));
    let stderr = collect(child.stderr.take().expect("stderr piped"));
    let started = Instant::now();
    let status = wait_timeout(&mut child, FAIL_TIMEOUT);
    let took = started.elapsed();
    if status.is_none() {
        signal(child.id(), libc::SIGTERM);
        if wait_timeout(&mut child, EXIT_TIMEOUT).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    // The pipes close when the process (and any child holding them) exits.
    let stderr = drained(&stderr, EXIT_TIMEOUT);
    let stdout = drained(&stdout, EXIT_TIMEOUT);
    let mut left = force_unmount_under(&p.state);
    // The target may legitimately be a mount already (the "target already a mount" case):
    // only mounts added on top of what was there count, and only those are removed.
    let at_target = mounts_under(&p.target);
    for m in at_target.iter().skip(before_at_target) {
        left.push(m.clone());
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&p.target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let procs = processes_mentioning(&p.dir.path().display().to_string());
    let status = status.unwrap_or_else(|| {
        panic!("[{label}] baofs did not exit within {FAIL_TIMEOUT:?} (expected a failure); stdout:\n{stdout}\nstderr:\n{stderr}")
    });
    assert!(
        !status.success(),
        "[{label}] baofs exited 0, expected a failure; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        left.is_empty(),
        "[{label}] baofs failed but left mounts behind: {left:?}\nstderr:\n{stderr}"
    );
    assert!(
        procs.is_empty(),
        "[{label}] processes still running after baofs failed: {procs:?}"
    );
    assert!(
        !stdout.contains("baofs: mounted"),
        "[{label}] baofs printed the ready line but exited with {status}; stderr:\n{stderr}"
    );
    assert!(
        !stderr.trim().is_empty(),
        "[{label}] baofs failed ({status}) with an empty stderr"
    );
    Failure {
        status,
        stderr,
        stdout,
        took,
    }
}

// ---------------------------------------------------------------------------------------------
// Misc

/// Lists a directory: name -> is_dir.
pub fn list_dir(dir: &Path) -> BTreeMap<String, bool> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| {
            let e = e.expect("dir entry");
            let is_dir = e.file_type().expect("file type").is_dir();
            (e.file_name().to_string_lossy().into_owned(), is_dir)
        })
        .collect()
}
