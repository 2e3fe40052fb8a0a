//! `baofs holder`: keeps `/dev/fuse` fds alive across driver restarts (issue 7 groundwork).
//!
//! A FUSE connection is aborted when the last open file description of its `/dev/fuse` fd is
//! closed; every later syscall on the mount then fails with ENOTCONN (docs/design.md §9b). The
//! holder is a small, rarely changing process that keeps a dup of each fd the driver gives it,
//! so a driver crash leaves the connection alive: requests queue (readers block) until a
//! successor fetches the fd back and serves it (`fuse::raw`, `ConnState::adopted`).
//!
//! Socket: `<state-dir>/holder.sock`, mode 0600 from the moment it exists, and only peers with
//! uid 0 or the holder's own uid (SO_PEERCRED) are served. One request per connection: a JSON
//! line, plus at most one fd as SCM_RIGHTS; one JSON line back, plus an fd for `get`.
//!
//! ```text
//! {"op":"put","name":"hub","meta":{..}} + fd  -> {"ok":true}     (replaces and closes an old one)
//! {"op":"get","name":"hub"}                   -> {"ok":true,"meta":{..}} + fd (same description)
//! {"op":"drop","name":"hub"}                  -> {"ok":true}     (closes it)
//! {"op":"list"}                               -> {"ok":true,"names":[..]}
//! error                                       -> {"ok":false,"error":".."}
//! ```
//!
//! `meta` is opaque to the holder (e.g. a serialized `fuse::raw::ConnState` and the volume
//! list). It must NEVER contain secret values: the successor refetches them from OpenBao.
//! The holder never reads from or writes to a fuse fd.
//!
//! On SIGTERM (or SIGINT) the holder closes every fd and exits 0. Closing unmounts nothing,
//! but a connection whose last fd it was is aborted: its mounts answer ENOTCONN. Stop the
//! holder only after its mounts are gone.

mod wire;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tracing::{debug, info, warn};

/// How long either side waits for the other on one connection.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The holder's socket in `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("holder.sock")
}

/// The operation of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Put,
    Get,
    Drop,
    List,
}

/// A request on the wire. A plain struct, not a tagged enum, so `meta` stays raw JSON on both
/// sides: the holder stores the checkpoint's text without building (and later freeing) a tree
/// of it, which a checkpoint of 1000 volumes made measurable on every publish.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meta: Option<Box<RawValue>>,
}

impl Request {
    fn new(op: Op, name: Option<&str>) -> Self {
        Self {
            op,
            name: name.map(str::to_owned),
            meta: None,
        }
    }

    fn op(&self) -> &'static str {
        match self.op {
            Op::Put => "put",
            Op::Get => "get",
            Op::Drop => "drop",
            Op::List => "list",
        }
    }
}

/// A reply on the wire.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meta: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    names: Option<Vec<String>>,
}

impl Reply {
    fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }
    fn err(e: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(e.into()),
            ..Self::default()
        }
    }
}

/// Errors of the client API; each names the socket and the operation.
#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    /// Connecting, sending or receiving failed.
    #[error("holder {op} via {}: {source}", path.display())]
    Io {
        /// The operation.
        op: &'static str,
        /// The holder socket.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The holder answered with an error.
    #[error("holder {op} via {}: refused: {message}", path.display())]
    Refused {
        /// The operation.
        op: &'static str,
        /// The holder socket.
        path: PathBuf,
        /// The holder's message.
        message: String,
    },
    /// The reply did not follow the protocol.
    #[error("holder {op} via {}: bad reply: {detail}", path.display())]
    Protocol {
        /// The operation.
        op: &'static str,
        /// The holder socket.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// Sends one request, returns the reply and the fds that came with it.
fn call(
    sock: &Path,
    req: &Request,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(Reply, Vec<OwnedFd>), HolderError> {
    let op = req.op();
    let io_err = |source| HolderError::Io {
        op,
        path: sock.to_path_buf(),
        source,
    };
    let proto = |detail: String| HolderError::Protocol {
        op,
        path: sock.to_path_buf(),
        detail,
    };
    let stream = UnixStream::connect(sock).map_err(io_err)?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io_err)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io_err)?;
    let mut line = serde_json::to_vec(req).map_err(|e| proto(e.to_string()))?;
    line.push(b'\n');
    wire::send_line(stream.as_fd(), &line, fd).map_err(io_err)?;
    let (line, fds) = wire::recv_line(stream.as_fd()).map_err(io_err)?;
    let reply: Reply = serde_json::from_slice(&line).map_err(|e| proto(e.to_string()))?;
    if !reply.ok {
        return Err(HolderError::Refused {
            op,
            path: sock.to_path_buf(),
            message: reply.error.unwrap_or_default(),
        });
    }
    Ok((reply, fds))
}

/// Gives the holder a dup of `fd` under `name` with `meta` (never secrets), replacing and
/// closing a previous fd of that name.
pub fn put(
    sock: &Path,
    name: &str,
    meta: &RawValue,
    fd: BorrowedFd<'_>,
) -> Result<(), HolderError> {
    let req = Request {
        meta: Some(meta.to_owned()),
        ..Request::new(Op::Put, Some(name))
    };
    call(sock, &req, Some(fd)).map(|_| ())
}

/// The fd held under `name` (a new fd for the same open file description) and its meta.
pub fn get(sock: &Path, name: &str) -> Result<(Value, OwnedFd), HolderError> {
    let (raw, fd) = get_raw(sock, name)?;
    let meta = match raw {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| HolderError::Protocol {
            op: "get",
            path: sock.to_path_buf(),
            detail: e.to_string(),
        })?,
        None => Value::Null,
    };
    Ok((meta, fd))
}

/// `get`, with the meta as the JSON text it was put with (to parse straight into a type).
pub fn get_raw(sock: &Path, name: &str) -> Result<(Option<Box<RawValue>>, OwnedFd), HolderError> {
    let (reply, mut fds) = call(sock, &Request::new(Op::Get, Some(name)), None)?;
    let proto = |detail: &str| HolderError::Protocol {
        op: "get",
        path: sock.to_path_buf(),
        detail: detail.to_owned(),
    };
    if fds.len() != 1 {
        return Err(proto(&format!("expected 1 fd, got {}", fds.len())));
    }
    let fd = fds.remove(0);
    Ok((reply.meta, fd))
}

/// Closes the fd held under `name` (its connection is aborted if no one else holds it).
pub fn drop_fd(sock: &Path, name: &str) -> Result<(), HolderError> {
    call(sock, &Request::new(Op::Drop, Some(name)), None).map(|_| ())
}

/// Names of the fds held.
pub fn list(sock: &Path) -> Result<Vec<String>, HolderError> {
    let (reply, _) = call(sock, &Request::new(Op::List, None), None)?;
    Ok(reply.names.unwrap_or_default())
}

/// One held fd.
struct Entry {
    fd: OwnedFd,
    meta: Option<Box<RawValue>>,
}

type Table = Arc<Mutex<BTreeMap<String, Entry>>>;

/// Errors of the holder process.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Setting up the socket failed.
    #[error("holder socket {}: {source}", path.display())]
    Socket {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Another holder listens there.
    #[error("holder socket {}: another holder is listening there", path.display())]
    InUse {
        /// The path.
        path: PathBuf,
    },
}

/// Creates `state_dir` (0700) if missing and listens on `holder.sock` in it, mode 0600 before
/// anyone can connect: bound in a private 0700 directory, then renamed into place. An existing
/// path is replaced only if it is a socket nobody listens on.
fn listen(state_dir: &Path) -> Result<std::os::unix::net::UnixListener, ServeError> {
    let path = socket_path(state_dir);
    let err = |source| ServeError::Socket {
        path: path.clone(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(err)?;
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(&path).is_ok() {
                return Err(ServeError::InUse { path });
            }
            info!(socket = %path.display(), "replacing a stale holder socket");
        }
        Ok(_) => {
            return Err(err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let private = state_dir.join(format!(".holder-{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(err)?;
    let tmp = private.join("holder.sock");
    let bound = std::os::unix::net::UnixListener::bind(&tmp)
        .and_then(|l| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&tmp, &path)?;
            Ok(l)
        })
        .map_err(err);
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Runs the holder on `<state_dir>/holder.sock` until SIGTERM or SIGINT.
pub async fn run(state_dir: &Path) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let path = socket_path(state_dir);
    let std_listener = listen(state_dir)?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(std_listener)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let table: Table = Arc::default();
    let me = wire::own_uid();
    info!(socket = %path.display(), "holder listening");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            accepted = listener.accept() => {
                let stream = match accepted.and_then(|(s, _)| s.into_std()) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "holder accept failed");
                        continue;
                    }
                };
                let table = Arc::clone(&table);
                tokio::task::spawn_blocking(move || serve_one(stream, &table, me));
            }
        }
    }
    let held: Vec<String> = table
        .lock()
        .map(|mut t| std::mem::take(&mut *t).into_keys().collect())
        .unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    info!(closed = ?held, "holder stopping: closed every held fd");
    Ok(())
}

/// Serves one connection: check the peer, read the request, answer.
fn serve_one(stream: UnixStream, table: &Mutex<BTreeMap<String, Entry>>, me: u32) {
    let send = |reply: &Reply, fd: Option<BorrowedFd<'_>>| {
        let mut line = serde_json::to_vec(reply).unwrap_or_default();
        line.push(b'\n');
        if let Err(e) = wire::send_line(stream.as_fd(), &line, fd) {
            warn!(error = %e, "holder reply failed");
        }
    };
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)));
    if let Err(e) = setup {
        warn!(error = %e, "holder connection setup failed");
        return;
    }
    match wire::peer_uid(stream.as_fd()) {
        Ok(uid) if uid == 0 || uid == me => {}
        Ok(uid) => {
            warn!(uid, "holder refused a peer");
            return send(&Reply::err(format!("uid {uid} is not allowed")), None);
        }
        Err(e) => {
            warn!(error = %e, "holder could not read peer credentials");
            return;
        }
    }
    let (line, mut fds) = match wire::recv_line(stream.as_fd()) {
        Ok(r) => r,
        Err(e) => return send(&Reply::err(format!("reading the request: {e}")), None),
    };
    let req: Request = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => return send(&Reply::err(format!("bad request: {e}")), None),
    };
    let op = req.op();
    if req.op != Op::Put && !fds.is_empty() {
        return send(&Reply::err(format!("{op} takes no fd")), None);
    }
    let name = match (req.op, req.name) {
        (Op::List, _) => String::new(),
        (_, Some(name)) => name,
        (_, None) => return send(&Reply::err(format!("{op} needs a name")), None),
    };
    let Ok(mut t) = table.lock() else {
        return send(&Reply::err("holder state poisoned"), None);
    };
    match req.op {
        Op::Put => {
            if fds.len() != 1 {
                return send(
                    &Reply::err(format!("put needs exactly 1 fd, got {}", fds.len())),
                    None,
                );
            }
            let fd = fds.remove(0);
            let meta = req.meta;
            let old = t.insert(name.clone(), Entry { fd, meta });
            drop(t);
            let replaced = old.is_some();
            if replaced {
                // A checkpoint re-put under the same name: routine, not news.
                debug!(name, replaced, "holder: fd stored");
            } else {
                info!(name, replaced, "holder: fd stored");
            }
            send(&Reply::ok(), None);
            // The replaced fd is closed after the reply: the driver does not wait for it.
            drop(old);
        }
        Op::Get => match t.get(&name) {
            Some(e) => send(
                &Reply {
                    meta: e.meta.clone(),
                    ..Reply::ok()
                },
                Some(e.fd.as_fd()),
            ),
            None => send(&Reply::err(format!("no fd named {name:?}")), None),
        },
        Op::Drop => match t.remove(&name) {
            Some(_) => {
                drop(t);
                info!(name, "holder: fd closed");
                send(&Reply::ok(), None);
            }
            None => send(&Reply::err(format!("no fd named {name:?}")), None),
        },
        Op::List => {
            let names = t.keys().cloned().collect();
            drop(t);
            send(
                &Reply {
                    names: Some(names),
                    ..Reply::ok()
                },
                None,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_wire_form() {
        let put = Request {
            meta: serde_json::value::to_raw_value(&serde_json::json!({"minor": 40})).ok(),
            ..Request::new(Op::Put, Some("hub"))
        };
        assert_eq!(
            serde_json::to_string(&put).unwrap_or_default(),
            r#"{"op":"put","name":"hub","meta":{"minor":40}}"#
        );
        let list: Result<Request, _> = serde_json::from_str(r#"{"op":"list"}"#);
        assert!(matches!(list, Ok(Request { op: Op::List, .. })));
        let get: Result<Request, _> = serde_json::from_str(r#"{"op":"get","name":"hub"}"#);
        assert!(matches!(get, Ok(Request { op: Op::Get, name: Some(ref n), .. }) if n == "hub"));
        // A put's meta is kept as the text it came as.
        let put: Result<Request, _> =
            serde_json::from_str(r#"{"op":"put","name":"hub","meta":{"a": [1, 2]}}"#);
        let meta = put.ok().and_then(|p| p.meta).map(|m| m.get().to_owned());
        assert_eq!(meta.as_deref(), Some(r#"{"a": [1, 2]}"#));
        assert_eq!(
            serde_json::to_string(&Reply::err("x")).unwrap_or_default(),
            r#"{"ok":false,"error":"x"}"#
        );
    }

    #[test]
    fn errors_name_the_socket_and_the_op() {
        let e = list(Path::new("/nonexistent/holder.sock")).expect_err("no holder there");
        let s = e.to_string();
        assert!(
            s.contains("/nonexistent/holder.sock") && s.contains("list"),
            "{s}"
        );
    }
}
