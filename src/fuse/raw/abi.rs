//! Byte-level encoding and decoding of the FUSE kernel ABI (`include/uapi/linux/fuse.h`), for
//! the read-only request subset baofs serves. Everything is little-endian and bounds-checked;
//! no `unsafe`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType};

/// Size of `fuse_in_header`.
pub const IN_HEADER_LEN: usize = 40;
/// Size of `fuse_out_header`.
pub const OUT_HEADER_LEN: usize = 16;
/// Size of `fuse_attr`.
pub const ATTR_LEN: usize = 88;
/// Size of `fuse_entry_out`.
pub const ENTRY_OUT_LEN: usize = 40 + ATTR_LEN;
/// Size of `fuse_attr_out`.
pub const ATTR_OUT_LEN: usize = 16 + ATTR_LEN;
/// Size of `fuse_statfs_out` (`fuse_kstatfs`).
pub const STATFS_OUT_LEN: usize = 80;
/// Size of `fuse_init_out` from protocol 7.23 on.
pub const INIT_OUT_LEN: usize = 64;
/// Size of the fixed part of `fuse_dirent`.
pub const DIRENT_LEN: usize = 24;
/// Bit 63 of `unique`: the kernel resent this request after FUSE_NOTIFY_RESEND.
pub const UNIQUE_RESEND: u64 = 1 << 63;

/// FUSE_ASYNC_READ: the kernel may issue several READs of one file at once.
pub const FUSE_ASYNC_READ: u32 = 1 << 0;

/// Notification codes (`fuse_notify_code`).
pub const NOTIFY_DELETE: i32 = 6;
/// FUSE_NOTIFY_RESEND (7.40, Linux 6.9).
pub const NOTIFY_RESEND: i32 = 7;

/// Opcodes (`fuse_opcode`).
#[allow(missing_docs)]
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SETUPMAPPING: u32 = 48;
    pub const REMOVEMAPPING: u32 = 49;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
}

/// Opcodes that modify the filesystem: answered with EROFS.
pub fn is_write_op(opcode: u32) -> bool {
    matches!(
        opcode,
        op::SETATTR
            | op::SYMLINK
            | op::MKNOD
            | op::MKDIR
            | op::UNLINK
            | op::RMDIR
            | op::RENAME
            | op::LINK
            | op::WRITE
            | op::SETXATTR
            | op::REMOVEXATTR
            | op::CREATE
            | op::FALLOCATE
            | op::RENAME2
            | op::COPY_FILE_RANGE
            | op::SETUPMAPPING
            | op::REMOVEMAPPING
            | op::TMPFILE
    )
}

/// A malformed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed FUSE message: {0}")]
pub struct Malformed(pub &'static str);

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// `fuse_in_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InHeader {
    /// Total length of the request, header included.
    pub len: u32,
    /// Opcode.
    pub opcode: u32,
    /// Request id (bit 63: resent).
    pub unique: u64,
    /// Inode the request is about.
    pub nodeid: u64,
    /// Caller's uid.
    pub uid: u32,
    /// Caller's gid.
    pub gid: u32,
    /// Caller's pid.
    pub pid: u32,
    /// Length of extensions, in 8-byte units (7.38).
    pub total_extlen: u16,
    /// Padding.
    pub padding: u16,
}

impl InHeader {
    /// Decodes the header at the start of `b`.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        let f = || {
            Some(Self {
                len: u32_at(b, 0)?,
                opcode: u32_at(b, 4)?,
                unique: u64_at(b, 8)?,
                nodeid: u64_at(b, 16)?,
                uid: u32_at(b, 24)?,
                gid: u32_at(b, 28)?,
                pid: u32_at(b, 32)?,
                total_extlen: u16_at(b, 36)?,
                padding: u16_at(b, 38)?,
            })
        };
        f().ok_or(Malformed("short header"))
    }

    /// Encodes the header (for tests and fixtures).
    pub fn encode(&self) -> [u8; IN_HEADER_LEN] {
        let mut out = [0u8; IN_HEADER_LEN];
        out[0..4].copy_from_slice(&self.len.to_le_bytes());
        out[4..8].copy_from_slice(&self.opcode.to_le_bytes());
        out[8..16].copy_from_slice(&self.unique.to_le_bytes());
        out[16..24].copy_from_slice(&self.nodeid.to_le_bytes());
        out[24..28].copy_from_slice(&self.uid.to_le_bytes());
        out[28..32].copy_from_slice(&self.gid.to_le_bytes());
        out[32..36].copy_from_slice(&self.pid.to_le_bytes());
        out[36..38].copy_from_slice(&self.total_extlen.to_le_bytes());
        out[38..40].copy_from_slice(&self.padding.to_le_bytes());
        out
    }
}

/// `fuse_out_header`: `len` is filled in from the body length.
pub fn out_header(unique: u64, error: i32, body_len: usize) -> [u8; OUT_HEADER_LEN] {
    let len = u32::try_from(OUT_HEADER_LEN + body_len).unwrap_or(u32::MAX);
    let mut out = [0u8; OUT_HEADER_LEN];
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&error.to_le_bytes());
    out[8..16].copy_from_slice(&unique.to_le_bytes());
    out
}

/// A decoded `fuse_out_header` (for tests).
pub fn decode_out_header(b: &[u8]) -> Option<(u32, i32, u64)> {
    Some((u32_at(b, 0)?, u32_at(b, 4)? as i32, u64_at(b, 8)?))
}

/// A complete reply: header + body.
pub fn reply(unique: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OUT_HEADER_LEN + body.len());
    out.extend_from_slice(&out_header(unique, 0, body.len()));
    out.extend_from_slice(body);
    out
}

/// An error reply: `errno` positive, sent negated.
pub fn reply_error(unique: u64, errno: i32) -> [u8; OUT_HEADER_LEN] {
    out_header(unique, -errno, 0)
}

/// `fuse_init_in`, as far as baofs reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitIn {
    /// Kernel's major version.
    pub major: u32,
    /// Kernel's minor version.
    pub minor: u32,
    /// Kernel's maximum readahead.
    pub max_readahead: u32,
    /// Kernel's capability flags.
    pub flags: u32,
}

impl InitIn {
    /// Decodes the body of an INIT request.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        let f = || {
            Some(Self {
                major: u32_at(b, 0)?,
                minor: u32_at(b, 4)?,
                max_readahead: u32_at(b, 8)?,
                flags: u32_at(b, 12)?,
            })
        };
        f().ok_or(Malformed("short fuse_init_in"))
    }
}

/// `fuse_init_out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InitOut {
    /// Major version (7).
    pub major: u32,
    /// Negotiated minor version.
    pub minor: u32,
    /// Maximum readahead.
    pub max_readahead: u32,
    /// Capability flags claimed.
    pub flags: u32,
    /// Maximum background requests.
    pub max_background: u16,
    /// Congestion threshold.
    pub congestion_threshold: u16,
    /// Maximum WRITE payload.
    pub max_write: u32,
    /// Timestamp granularity in ns.
    pub time_gran: u32,
    /// Maximum pages per request (used only with FUSE_MAX_PAGES).
    pub max_pages: u16,
}

impl InitOut {
    /// Encodes the reply body at the size a kernel of protocol `7.minor` expects: 8 bytes
    /// before 7.5, 24 before 7.23, 64 after.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; INIT_OUT_LEN];
        out[0..4].copy_from_slice(&self.major.to_le_bytes());
        out[4..8].copy_from_slice(&self.minor.to_le_bytes());
        out[8..12].copy_from_slice(&self.max_readahead.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..18].copy_from_slice(&self.max_background.to_le_bytes());
        out[18..20].copy_from_slice(&self.congestion_threshold.to_le_bytes());
        out[20..24].copy_from_slice(&self.max_write.to_le_bytes());
        out[24..28].copy_from_slice(&self.time_gran.to_le_bytes());
        out[28..30].copy_from_slice(&self.max_pages.to_le_bytes());
        // map_alignment, flags2, max_stack_depth, request_timeout, unused: 0.
        let len = match self.minor {
            0..5 => 8,
            5..23 => 24,
            _ => INIT_OUT_LEN,
        };
        out.truncate(len);
        out
    }

    /// Decodes an encoded body (for tests).
    pub fn decode(b: &[u8]) -> Option<Self> {
        Some(Self {
            major: u32_at(b, 0)?,
            minor: u32_at(b, 4)?,
            max_readahead: u32_at(b, 8).unwrap_or(0),
            flags: u32_at(b, 12).unwrap_or(0),
            max_background: u16_at(b, 16).unwrap_or(0),
            congestion_threshold: u16_at(b, 18).unwrap_or(0),
            max_write: u32_at(b, 20).unwrap_or(0),
            time_gran: u32_at(b, 24).unwrap_or(0),
            max_pages: u16_at(b, 28).unwrap_or(0),
        })
    }
}

/// `fuse_read_in` (also the body of READDIR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadIn {
    /// File handle.
    pub fh: u64,
    /// Offset.
    pub offset: u64,
    /// Bytes wanted.
    pub size: u32,
}

impl ReadIn {
    /// Decodes the body of a READ or READDIR request (24 bytes before 7.9, 40 after).
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        let f = || {
            Some(Self {
                fh: u64_at(b, 0)?,
                offset: u64_at(b, 8)?,
                size: u32_at(b, 16)?,
            })
        };
        f().ok_or(Malformed("short fuse_read_in"))
    }

    /// Encodes a 40-byte `fuse_read_in` (for tests).
    pub fn encode(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[0..8].copy_from_slice(&self.fh.to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..20].copy_from_slice(&self.size.to_le_bytes());
        out
    }
}

/// `fuse_forget_in`: the lookup count to drop.
pub fn decode_forget(b: &[u8]) -> Result<u64, Malformed> {
    u64_at(b, 0).ok_or(Malformed("short fuse_forget_in"))
}

/// `fuse_batch_forget_in` + `fuse_forget_one`s: (nodeid, nlookup) pairs.
pub fn decode_batch_forget(b: &[u8]) -> Result<Vec<(u64, u64)>, Malformed> {
    let count = u32_at(b, 0).ok_or(Malformed("short fuse_batch_forget_in"))? as usize;
    let items = b.get(8..).unwrap_or_default();
    if items.len() / 16 < count {
        return Err(Malformed("truncated batch forget"));
    }
    Ok(items
        .chunks_exact(16)
        .take(count)
        .filter_map(|c| Some((u64_at(c, 0)?, u64_at(c, 8)?)))
        .collect())
}

/// The NUL-terminated name at the start of `b` (LOOKUP).
pub fn decode_name(b: &[u8]) -> Result<&[u8], Malformed> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or(Malformed("name without NUL"))?;
    Ok(&b[..end])
}

/// (seconds, nanoseconds) of a duration, saturated to what the ABI holds.
pub fn split_duration(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

fn split_time(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => split_duration(d),
        Err(_) => (0, 0),
    }
}

/// The `S_IFMT` bits of a file type.
pub fn type_bits(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    }
}

/// `fuse_attr` of `attr`.
pub fn encode_attr(attr: &FileAttr) -> [u8; ATTR_LEN] {
    let (atime, atimensec) = split_time(attr.atime);
    let (mtime, mtimensec) = split_time(attr.mtime);
    let (ctime, ctimensec) = split_time(attr.ctime);
    let mode = type_bits(attr.kind) | u32::from(attr.perm);
    let mut out = [0u8; ATTR_LEN];
    out[0..8].copy_from_slice(&attr.ino.0.to_le_bytes());
    out[8..16].copy_from_slice(&attr.size.to_le_bytes());
    out[16..24].copy_from_slice(&attr.blocks.to_le_bytes());
    out[24..32].copy_from_slice(&atime.to_le_bytes());
    out[32..40].copy_from_slice(&mtime.to_le_bytes());
    out[40..48].copy_from_slice(&ctime.to_le_bytes());
    out[48..52].copy_from_slice(&atimensec.to_le_bytes());
    out[52..56].copy_from_slice(&mtimensec.to_le_bytes());
    out[56..60].copy_from_slice(&ctimensec.to_le_bytes());
    out[60..64].copy_from_slice(&mode.to_le_bytes());
    out[64..68].copy_from_slice(&attr.nlink.to_le_bytes());
    out[68..72].copy_from_slice(&attr.uid.to_le_bytes());
    out[72..76].copy_from_slice(&attr.gid.to_le_bytes());
    out[76..80].copy_from_slice(&attr.rdev.to_le_bytes());
    out[80..84].copy_from_slice(&attr.blksize.to_le_bytes());
    out[84..88].copy_from_slice(&attr.flags.to_le_bytes());
    out
}

/// The fields of an encoded `fuse_attr` (for tests): (ino, size, blocks, mtime, mtimensec,
/// mode, nlink, uid, gid, blksize).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedAttr {
    /// ino
    pub ino: u64,
    /// size
    pub size: u64,
    /// blocks
    pub blocks: u64,
    /// mtime seconds
    pub mtime: u64,
    /// mtime nanoseconds
    pub mtimensec: u32,
    /// type bits | permissions
    pub mode: u32,
    /// nlink
    pub nlink: u32,
    /// uid
    pub uid: u32,
    /// gid
    pub gid: u32,
    /// blksize
    pub blksize: u32,
}

/// Decodes a `fuse_attr` (for tests).
pub fn decode_attr(b: &[u8]) -> Option<DecodedAttr> {
    Some(DecodedAttr {
        ino: u64_at(b, 0)?,
        size: u64_at(b, 8)?,
        blocks: u64_at(b, 16)?,
        mtime: u64_at(b, 32)?,
        mtimensec: u32_at(b, 52)?,
        mode: u32_at(b, 60)?,
        nlink: u32_at(b, 64)?,
        uid: u32_at(b, 68)?,
        gid: u32_at(b, 72)?,
        blksize: u32_at(b, 80)?,
    })
}

/// `fuse_entry_out` for `attr`, valid for `ttl` (entry and attributes), generation 0.
pub fn encode_entry_out(attr: &FileAttr, ttl: Duration) -> [u8; ENTRY_OUT_LEN] {
    let (secs, nsecs) = split_duration(ttl);
    let mut out = [0u8; ENTRY_OUT_LEN];
    out[0..8].copy_from_slice(&attr.ino.0.to_le_bytes());
    // generation (8..16) stays 0: inode numbers are never reused for other content.
    out[16..24].copy_from_slice(&secs.to_le_bytes());
    out[24..32].copy_from_slice(&secs.to_le_bytes());
    out[32..36].copy_from_slice(&nsecs.to_le_bytes());
    out[36..40].copy_from_slice(&nsecs.to_le_bytes());
    out[40..].copy_from_slice(&encode_attr(attr));
    out
}

/// `fuse_attr_out` for `attr`, valid for `ttl`.
pub fn encode_attr_out(attr: &FileAttr, ttl: Duration) -> [u8; ATTR_OUT_LEN] {
    let (secs, nsecs) = split_duration(ttl);
    let mut out = [0u8; ATTR_OUT_LEN];
    out[0..8].copy_from_slice(&secs.to_le_bytes());
    out[8..12].copy_from_slice(&nsecs.to_le_bytes());
    // dummy (12..16)
    out[16..].copy_from_slice(&encode_attr(attr));
    out
}

/// `fuse_kstatfs` inside `fuse_statfs_out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Statfs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Maximum name length.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

impl Statfs {
    /// Encodes `fuse_statfs_out`.
    pub fn encode(&self) -> [u8; STATFS_OUT_LEN] {
        let mut out = [0u8; STATFS_OUT_LEN];
        out[0..8].copy_from_slice(&self.blocks.to_le_bytes());
        out[8..16].copy_from_slice(&self.bfree.to_le_bytes());
        out[16..24].copy_from_slice(&self.bavail.to_le_bytes());
        out[24..32].copy_from_slice(&self.files.to_le_bytes());
        out[32..40].copy_from_slice(&self.ffree.to_le_bytes());
        out[40..44].copy_from_slice(&self.bsize.to_le_bytes());
        out[44..48].copy_from_slice(&self.namelen.to_le_bytes());
        out[48..52].copy_from_slice(&self.frsize.to_le_bytes());
        out
    }

    /// Decodes `fuse_statfs_out` (for tests).
    pub fn decode(b: &[u8]) -> Option<Self> {
        Some(Self {
            blocks: u64_at(b, 0)?,
            bfree: u64_at(b, 8)?,
            bavail: u64_at(b, 16)?,
            files: u64_at(b, 24)?,
            ffree: u64_at(b, 32)?,
            bsize: u32_at(b, 40)?,
            namelen: u32_at(b, 44)?,
            frsize: u32_at(b, 48)?,
        })
    }
}

/// Size of one `fuse_dirent` with a name of `namelen` bytes, padded to 8.
pub fn dirent_size(namelen: usize) -> usize {
    (DIRENT_LEN + namelen).next_multiple_of(8)
}

/// Appends one `fuse_dirent` to `buf` unless it would exceed `limit` bytes in total; returns
/// whether it was added.
pub fn push_dirent(
    buf: &mut Vec<u8>,
    limit: usize,
    ino: u64,
    next_offset: u64,
    kind: FileType,
    name: &[u8],
) -> bool {
    let size = dirent_size(name.len());
    if buf.len() + size > limit {
        return false;
    }
    let namelen = u32::try_from(name.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&ino.to_le_bytes());
    buf.extend_from_slice(&next_offset.to_le_bytes());
    buf.extend_from_slice(&namelen.to_le_bytes());
    buf.extend_from_slice(&(type_bits(kind) >> 12).to_le_bytes());
    buf.extend_from_slice(name);
    buf.resize(buf.len() + size - DIRENT_LEN - name.len(), 0);
    true
}

/// A decoded `fuse_dirent` (for tests): (ino, off, type, name).
pub type DecodedDirent = (u64, u64, u32, Vec<u8>);

/// Decodes a READDIR reply body (for tests).
pub fn decode_dirents(mut b: &[u8]) -> Option<Vec<DecodedDirent>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let namelen = u32_at(b, 16)? as usize;
        let name = b.get(DIRENT_LEN..DIRENT_LEN + namelen)?.to_vec();
        out.push((u64_at(b, 0)?, u64_at(b, 8)?, u32_at(b, 20)?, name));
        b = b.get(dirent_size(namelen)..)?;
    }
    Some(out)
}

/// FUSE_NOTIFY_DELETE: `name` in directory `parent`, which named inode `child`, is gone.
/// Header + `fuse_notify_delete_out {parent, child, namelen, padding}` + name + NUL.
pub fn encode_notify_delete(parent: u64, child: u64, name: &[u8]) -> Vec<u8> {
    let body_len = 24 + name.len() + 1;
    let mut out = Vec::with_capacity(OUT_HEADER_LEN + body_len);
    out.extend_from_slice(&out_header(0, NOTIFY_DELETE, body_len));
    out.extend_from_slice(&parent.to_le_bytes());
    out.extend_from_slice(&child.to_le_bytes());
    out.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(name);
    out.push(0);
    out
}

/// FUSE_NOTIFY_RESEND: the kernel requeues every request read but not answered, with
/// `UNIQUE_RESEND` set. A bare header with unique 0.
pub fn encode_notify_resend() -> [u8; OUT_HEADER_LEN] {
    out_header(0, NOTIFY_RESEND, 0)
}
