//! Test 2: the volume is read-only: every mutation fails with EROFS and changes nothing.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use crate::harness::{MountOpts, Mounted, list_dir, obj, setup, spc_yaml, unique};

fn assert_erofs(what: &str, r: io::Result<impl std::fmt::Debug>) {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}), expected EROFS"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EROFS),
            "{what}: expected EROFS (Read-only file system), got {e}"
        ),
    }
}

#[test]
fn mutations_fail_with_erofs() {
    let Some(cx) = setup() else { return };
    let name = unique("ro");
    cx.bao
        .kv2_put(&name, json!({"k": "original", "n": "nested"}));
    let path = format!("secret/data/{name}");
    let spc = spc_yaml(
        &unique("ro"),
        &cx.bao.addr,
        "ro",
        &[
            obj("file", &path, Some("k")),
            obj("dir/inner", &path, Some("n")),
        ],
    );
    let m = Mounted::start(MountOpts::new(&cx, spc));
    let file = m.path("file");
    let before = list_dir(&m.target);

    assert_erofs("open(O_WRONLY)", OpenOptions::new().write(true).open(&file));
    assert_erofs(
        "open(O_RDWR)",
        OpenOptions::new().read(true).write(true).open(&file),
    );
    assert_erofs(
        "open(O_WRONLY|O_APPEND)",
        OpenOptions::new().append(true).open(&file),
    );
    assert_erofs(
        "open(O_WRONLY|O_TRUNC) (truncate)",
        OpenOptions::new().write(true).truncate(true).open(&file),
    );
    assert_erofs(
        "create new file",
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m.path("new")),
    );
    assert_erofs("create via fs::write", fs::write(m.path("new2"), b"x"));
    assert_erofs("unlink", fs::remove_file(&file));
    assert_erofs("unlink nested", fs::remove_file(m.path("dir/inner")));
    assert_erofs("mkdir", fs::create_dir(m.path("newdir")));
    assert_erofs("rmdir", fs::remove_dir(m.path("dir")));
    assert_erofs(
        "chmod",
        fs::set_permissions(&file, fs::Permissions::from_mode(0o777)),
    );
    assert_erofs("rename", fs::rename(&file, m.path("renamed")));
    assert_erofs("rename into dir", fs::rename(&file, m.path("dir/renamed")));
    assert_erofs(
        "symlink",
        std::os::unix::fs::symlink("/etc/passwd", m.path("link")),
    );
    assert_erofs("hard link", fs::hard_link(&file, m.path("hard")));

    // Nothing changed.
    assert_eq!(m.read_string("file"), "original");
    assert_eq!(m.read_string("dir/inner"), "nested");
    assert_eq!(list_dir(&m.target), before, "listing changed");
    let md = fs::metadata(&file).expect("stat");
    assert_eq!(md.permissions().mode() & 0o7777, 0o644, "mode changed");
    m.stop();
}
