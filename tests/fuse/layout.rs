//! Test 1: file contents, modes, ownership, nested paths, directory listing, mountinfo.

use std::os::unix::fs::MetadataExt;

use serde_json::json;

use crate::harness::{
    Ctx, MountOpts, Mounted, list_dir, mounts_at, mounts_under, obj, setup, spc_yaml, unique,
};

fn mount_layout(cx: &Ctx, extra: &[&str]) -> (Mounted, String, String) {
    let app = unique("layout-app");
    let db = unique("layout-db");
    cx.bao.kv2_put(
        &app,
        json!({"username": "admin", "password": "p@ss w0rd\n"}),
    );
    cx.bao.kv2_put(
        &db,
        json!({"url": "postgres://db.example:5432/app", "ca": "-----BEGIN CERT-----\nAAAA\n-----END CERT-----\n"}),
    );
    let objects = [
        obj("username", &format!("secret/data/{app}"), Some("username")).perm("0600"),
        obj("password", &format!("secret/data/{app}"), Some("password")).perm("0440"),
        obj("a/b/c", &format!("secret/data/{db}"), Some("url")),
        obj("a/ca.pem", &format!("secret/data/{db}"), Some("ca")),
    ];
    let spc = spc_yaml(&unique("layout"), &cx.bao.addr, "layout", &objects);
    let m = Mounted::start(MountOpts::new(cx, spc).args(extra));
    (m, app, db)
}

#[test]
fn contents_modes_owner_nested_listing() {
    let Some(cx) = setup() else { return };
    let (m, _app, _db) = mount_layout(&cx, &["--uid", "1234", "--gid", "5678"]);

    // Contents, modes, owner, sizes.
    for (name, mode, content) in [
        ("username", 0o600, "admin"),
        ("password", 0o440, "p@ss w0rd\n"),
        ("a/b/c", 0o644, "postgres://db.example:5432/app"),
        (
            "a/ca.pem",
            0o644,
            "-----BEGIN CERT-----\nAAAA\n-----END CERT-----\n",
        ),
    ] {
        assert_eq!(m.read_string(name), content, "{name}: content");
        let len = content.len() as u64;
        let md = std::fs::symlink_metadata(m.path(name)).expect("stat object file");
        assert!(
            md.is_file(),
            "{name} is not a regular file: {:?}",
            md.file_type()
        );
        assert_eq!(
            md.mode() & 0o7777,
            mode,
            "{name}: mode {:o}",
            md.mode() & 0o7777
        );
        assert_eq!(md.uid(), 1234, "{name}: uid");
        assert_eq!(md.gid(), 5678, "{name}: gid");
        assert_eq!(md.len(), len, "{name}: st_size");
    }
    for dir in ["", "a", "a/b"] {
        let md = std::fs::symlink_metadata(m.path(dir)).expect("stat dir");
        assert!(md.is_dir(), "{dir:?} is not a directory");
        assert_eq!(md.uid(), 1234, "dir {dir:?}: uid");
        assert_eq!(md.gid(), 5678, "dir {dir:?}: gid");
    }

    // Listings.
    let root = list_dir(&m.target);
    let want: Vec<(String, bool)> = vec![
        ("a".into(), true),
        ("password".into(), false),
        ("username".into(), false),
    ];
    assert_eq!(root.into_iter().collect::<Vec<_>>(), want, "root listing");
    let a = list_dir(&m.path("a"));
    let want: Vec<(String, bool)> = vec![("b".into(), true), ("ca.pem".into(), false)];
    assert_eq!(a.into_iter().collect::<Vec<_>>(), want, "a/ listing");
    let b = list_dir(&m.path("a/b"));
    let want: Vec<(String, bool)> = vec![("c".into(), false)];
    assert_eq!(b.into_iter().collect::<Vec<_>>(), want, "a/b listing");

    // Missing names are ENOENT.
    let err = std::fs::metadata(m.path("nope")).expect_err("nope must not exist");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");

    // mountinfo: the target is a fuse.baofs mount, and so is the hub under the state dir.
    let at = mounts_at(&m.target);
    assert!(
        at.iter().any(|e| e.fstype == "fuse.baofs"),
        "target not a fuse.baofs mount: {at:?}"
    );
    let hub = mounts_under(&m.state);
    assert!(
        hub.iter().any(|e| e.fstype == "fuse.baofs"),
        "no fuse.baofs hub under the state dir: {hub:?}"
    );
    m.stop();
}

#[test]
fn default_owner_is_root() {
    let Some(cx) = setup() else { return };
    let (m, _, _) = mount_layout(&cx, &[]);
    for name in ["username", "a/b/c", "a"] {
        let md = std::fs::metadata(m.path(name)).expect("stat");
        assert_eq!((md.uid(), md.gid()), (0, 0), "{name}: default owner");
    }
    m.stop();
}
