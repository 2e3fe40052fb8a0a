//! Mounting by hand: `/dev/fuse` + mount(2) with `fd=N`, bind mounts, umount2.
//!
//! baofs does not use fuser's mount helpers: in 0.18 they unmount without `MNT_DETACH` (EBUSY
//! with any file open) and can unmount an unrelated filesystem mounted later at the same path
//! (docs/design.md). Owning the mount is also what restart survival needs: the fd can be handed
//! to a holder, and nothing unmounts on drop.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Flags of every baofs mount: read-only, no setuid, no devices, no exec.
const SECURE_FLAGS: libc::c_ulong =
    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Opens `/dev/fuse` and mounts a new FUSE connection at `dir` (type `fuse.<subtype>`). The
/// kernel queues FUSE_INIT at mount time; the returned fd serves the connection.
pub fn mount_fuse(dir: &Path, subtype: &str) -> io::Result<OwnedFd> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")?;
    let fd: OwnedFd = dev.into();
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions",
        fd.as_raw_fd()
    );
    let source = CString::new(subtype).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fstype = CString::new(format!("fuse.{subtype}"))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let target = cstr(dir)?;
    let data = CString::new(data).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call; mount(2)
    // does not retain them.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            SECURE_FLAGS,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Bind-mounts `source` (a volume's directory in the hub) at `target`, then remounts the bind
/// read-only, nosuid, nodev, noexec. On failure nothing is left mounted at `target`.
pub fn bind(source: &Path, target: &Path) -> io::Result<()> {
    let src = cstr(source)?;
    let dst = cstr(target)?;
    // SAFETY: valid NUL-terminated strings that outlive the call; null fstype and data are
    // allowed for MS_BIND.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; a remount of a bind takes no source, fstype or data.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | SECURE_FLAGS,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        let _ = unmount(target);
        return Err(err);
    }
    Ok(())
}

/// How an unmount went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// Unmounted at once.
    Clean,
    /// Busy (files open): detached; the kernel finishes when the last file is closed.
    Lazy,
    /// Nothing was mounted there.
    NotMounted,
}

/// Unmounts `target`, lazily (`MNT_DETACH`) if it is busy. Never follows a symlink.
pub fn unmount(target: &Path) -> io::Result<Unmounted> {
    let dst = cstr(target)?;
    // SAFETY: valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(dst.as_ptr(), libc::UMOUNT_NOFOLLOW) };
    if rc == 0 {
        return Ok(Unmounted::Clean);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EBUSY) => {
            // SAFETY: as above.
            let rc =
                unsafe { libc::umount2(dst.as_ptr(), libc::UMOUNT_NOFOLLOW | libc::MNT_DETACH) };
            if rc == 0 {
                Ok(Unmounted::Lazy)
            } else {
                Err(io::Error::last_os_error())
            }
        }
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(Unmounted::NotMounted),
        // A dead connection answers ENOTCONN to path lookups; detach it.
        Some(libc::ENOTCONN) => {
            // SAFETY: as above.
            let rc =
                unsafe { libc::umount2(dst.as_ptr(), libc::UMOUNT_NOFOLLOW | libc::MNT_DETACH) };
            if rc == 0 {
                Ok(Unmounted::Lazy)
            } else {
                Err(io::Error::last_os_error())
            }
        }
        _ => Err(err),
    }
}

/// One line of /proc/self/mountinfo, the fields baofs needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the filesystem: every bind mount of one FUSE connection shares it.
    pub dev: String,
    /// Mount point.
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `fuse.baofs`.
    pub fstype: String,
    /// Path of the mount's root within its filesystem (a bind's subtree).
    pub root: String,
}

fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                dev: fields.get(2)?.to_string(),
                root: unescape(fields.get(3)?),
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: fields.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

/// Every mount of this process's mount namespace.
pub fn mounts() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Whether `path` (canonical) is a mount point.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    Ok(mounts()?.iter().any(|m| m.mount_point == path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_parsing_and_unescaping() {
        let text = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    40 22 0:45 /vol /var/lib/x/mount ro,nosuid shared:7 - fuse.baofs baofs ro\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[1].fstype, "fuse.baofs");
        assert_eq!(m[1].root, "/vol");
        assert_eq!(m[1].dev, "0:45");
    }
}
