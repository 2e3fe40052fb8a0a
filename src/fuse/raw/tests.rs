#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use super::abi::*;
use super::*;
use crate::cache::SecretCache;
use crate::cache::tests::{fetched, objects};
use crate::volume::Ownership;

fn header(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let h = InHeader {
        len: (IN_HEADER_LEN + body.len()) as u32,
        opcode,
        unique,
        nodeid,
        uid: 1000,
        gid: 1001,
        pid: 42,
        total_extlen: 0,
        padding: 0,
    };
    let mut m = h.encode().to_vec();
    m.extend_from_slice(body);
    m
}

fn attr(kind: FileType, perm: u16) -> FileAttr {
    let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    FileAttr {
        ino: INodeNo(0x0102_0304_0506_0708),
        size: 300,
        blocks: 1,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind,
        perm,
        nlink: 1,
        uid: 7,
        gid: 8,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

#[test]
fn in_header_round_trip_on_fixture() {
    let fixture: [u8; 40] = [
        0x38, 0, 0, 0, // len 56
        1, 0, 0, 0, // LOOKUP
        0x10, 0, 0, 0, 0, 0, 0, 0x80, // unique with resend bit
        1, 0, 0, 0, 0, 0, 0, 0, // nodeid 1
        0xe8, 3, 0, 0, // uid 1000
        0xe9, 3, 0, 0, // gid 1001
        42, 0, 0, 0, // pid
        0, 0, 0, 0, // extlen, padding
    ];
    let h = InHeader::decode(&fixture).unwrap();
    assert_eq!(h.len, 56);
    assert_eq!(h.opcode, op::LOOKUP);
    assert_eq!(h.unique, UNIQUE_RESEND | 0x10);
    assert_eq!((h.nodeid, h.uid, h.gid, h.pid), (1, 1000, 1001, 42));
    assert_eq!(h.encode(), fixture);
    assert!(InHeader::decode(&fixture[..39]).is_err());
}

#[test]
fn out_header_and_error_reply() {
    let e = reply_error(0x55, libc::ENOENT);
    assert_eq!(
        e,
        [
            16, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff, 0x55, 0, 0, 0, 0, 0, 0, 0
        ]
    );
    assert_eq!(decode_out_header(&e), Some((16, -libc::ENOENT, 0x55)));
    let r = reply(9, b"abc");
    assert_eq!(decode_out_header(&r), Some((19, 0, 9)));
    assert_eq!(&r[16..], b"abc");
}

#[test]
fn init_out_sizes_by_minor() {
    let mut o = InitOut {
        major: 7,
        minor: 40,
        max_readahead: 0x20000,
        flags: FUSE_ASYNC_READ,
        max_background: 16,
        congestion_threshold: 12,
        max_write: 0x20000,
        time_gran: 1,
        max_pages: 32,
    };
    let b = o.encode();
    assert_eq!(b.len(), 64);
    assert_eq!(InitOut::decode(&b), Some(o));
    assert_eq!(&b[0..8], &[7, 0, 0, 0, 40, 0, 0, 0]);
    o.minor = 22;
    assert_eq!(o.encode().len(), 24);
    o.minor = 4;
    assert_eq!(o.encode().len(), 8);
}

#[test]
fn init_in_and_read_in_decode() {
    let mut b = Vec::new();
    for v in [7u32, 44, 0x20000, 0xffff_ffff] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&[0; 48]);
    let i = InitIn::decode(&b).unwrap();
    assert_eq!((i.major, i.minor, i.max_readahead), (7, 44, 0x20000));
    let r = ReadIn {
        fh: 3,
        offset: 4096,
        size: 8192,
    };
    assert_eq!(ReadIn::decode(&r.encode()), Ok(r));
    assert!(ReadIn::decode(&[0; 10]).is_err());
}

#[test]
fn forget_bodies() {
    assert_eq!(decode_forget(&5u64.to_le_bytes()), Ok(5));
    let mut b = Vec::new();
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for v in [10u64, 1, 11, 2] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(decode_batch_forget(&b), Ok(vec![(10, 1), (11, 2)]));
    assert!(decode_batch_forget(&b[..20]).is_err());
    assert_eq!(decode_name(b"abc\0junk"), Ok(&b"abc"[..]));
    assert!(decode_name(b"abc").is_err());
}

#[test]
fn attr_entry_and_attr_out_layout() {
    let a = attr(FileType::RegularFile, 0o640);
    let e = encode_entry_out(&a, Duration::new(3600, 5));
    assert_eq!(e.len(), 128);
    assert_eq!(&e[0..8], &a.ino.0.to_le_bytes());
    assert_eq!(&e[8..16], &[0; 8]);
    assert_eq!(&e[16..24], &3600u64.to_le_bytes());
    assert_eq!(&e[24..32], &3600u64.to_le_bytes());
    assert_eq!(&e[32..36], &5u32.to_le_bytes());
    let d = decode_attr(&e[40..]).unwrap();
    assert_eq!(d.ino, a.ino.0);
    assert_eq!((d.size, d.blocks), (300, 1));
    assert_eq!((d.mtime, d.mtimensec), (1_700_000_000, 123_456_789));
    assert_eq!(d.mode, libc::S_IFREG | 0o640);
    assert_eq!((d.nlink, d.uid, d.gid, d.blksize), (1, 7, 8, 4096));
    let o = encode_attr_out(&attr(FileType::Directory, 0o755), Duration::from_secs(2));
    assert_eq!(o.len(), 104);
    assert_eq!(&o[0..8], &2u64.to_le_bytes());
    assert_eq!(decode_attr(&o[16..]).unwrap().mode, libc::S_IFDIR | 0o755);
    // Times before the epoch clamp to 0.
    let mut old = a;
    old.mtime = UNIX_EPOCH - Duration::from_secs(5);
    assert_eq!(decode_attr(&encode_attr(&old)).unwrap().mtime, 0);
}

#[test]
fn statfs_round_trip() {
    let s = Statfs {
        blocks: 1,
        bfree: 2,
        bavail: 3,
        files: 4,
        ffree: 5,
        bsize: 4096,
        namelen: 255,
        frsize: 4096,
    };
    let b = s.encode();
    assert_eq!(b.len(), 80);
    assert_eq!(Statfs::decode(&b), Some(s));
}

#[test]
fn dirent_padding_and_limit() {
    assert_eq!(dirent_size(1), 32);
    assert_eq!(dirent_size(8), 32);
    assert_eq!(dirent_size(9), 40);
    let mut buf = Vec::new();
    assert!(push_dirent(&mut buf, 64, 5, 1, FileType::Directory, b"."));
    assert_eq!(buf.len(), 32);
    assert_eq!(&buf[25..32], &[0; 7]);
    assert!(push_dirent(
        &mut buf,
        64,
        6,
        2,
        FileType::RegularFile,
        b"abcdefgh"
    ));
    assert_eq!(buf.len(), 64);
    assert!(!push_dirent(
        &mut buf,
        64,
        7,
        3,
        FileType::RegularFile,
        b"x"
    ));
    assert_eq!(
        decode_dirents(&buf).unwrap(),
        vec![(5, 1, 4, b".".to_vec()), (6, 2, 8, b"abcdefgh".to_vec())]
    );
}

#[test]
fn notifications() {
    let d = encode_notify_delete(1, 2, b"name");
    assert_eq!(d.len(), 16 + 24 + 5);
    assert_eq!(decode_out_header(&d), Some((45, NOTIFY_DELETE, 0)));
    assert_eq!(&d[16..24], &1u64.to_le_bytes());
    assert_eq!(&d[24..32], &2u64.to_le_bytes());
    assert_eq!(&d[32..36], &4u32.to_le_bytes());
    assert_eq!(&d[40..], b"name\0");
    assert_eq!(
        encode_notify_resend(),
        [16, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
}

fn server(state: ConnState) -> (Server, u64) {
    let cache = Arc::new(SecretCache::new());
    let objs = objects(&[("a", Some(0o600)), ("d/b", None)]);
    let layout = crate::cache::Layout::new("vol", &objs).unwrap();
    cache
        .insert(
            "vol",
            layout,
            Ownership::default(),
            fetched(&objs, &["alpha", "beta"]),
        )
        .unwrap();
    let fs = Arc::new(Fs::new(cache));
    let vol_ino = fs.lookup(crate::fs::ROOT_INO, OsStr::new("vol")).unwrap();
    (
        Server::new(fs, Duration::from_secs(60), state),
        vol_ino.ino.0,
    )
}

fn reply_of(o: Outcome) -> Vec<u8> {
    match o {
        Outcome::Reply(r) | Outcome::ReplyAndStop(r) => r,
        other => panic!("no reply: {other:?}"),
    }
}

#[test]
fn fresh_connection_wants_init_first() {
    let (s, _) = server(ConnState::fresh());
    let r = reply_of(s.handle(&header(op::GETATTR, 2, 1, &[0; 16])));
    assert_eq!(decode_out_header(&r), Some((16, -libc::EIO, 2)));
    let mut init = Vec::new();
    for v in [7u32, 44, 0x20000, 0xffff_ffff] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    let r = reply_of(s.handle(&header(op::INIT, 1, 0, &init)));
    assert_eq!(decode_out_header(&r), Some((80, 0, 1)));
    let o = InitOut::decode(&r[16..]).unwrap();
    assert_eq!(
        (o.major, o.minor, o.flags),
        (7, SUPPORTED_MINOR, FUSE_ASYNC_READ)
    );
    assert_eq!(o.max_write, MAX_WRITE);
    assert_eq!(s.state().minor, SUPPORTED_MINOR);
    let r = reply_of(s.handle(&header(op::GETATTR, 3, 1, &[0; 16])));
    assert_eq!(decode_out_header(&r), Some((16 + 104, 0, 3)));
    // An old kernel is refused.
    let (s, _) = server(ConnState::fresh());
    init[4..8].copy_from_slice(&8u32.to_le_bytes());
    let r = reply_of(s.handle(&header(op::INIT, 1, 0, &init)));
    assert_eq!(decode_out_header(&r), Some((16, -libc::EPROTO, 1)));
}

#[test]
fn adopted_connection_serves_at_once_and_echoes_resent_unique() {
    let (s, vol) = server(ConnState::adopted(31));
    let unique = UNIQUE_RESEND | 0x10;
    let r = reply_of(s.handle(&header(op::LOOKUP, unique, vol, b"a\0")));
    assert_eq!(decode_out_header(&r), Some((16 + 128, 0, unique)));
    let a = decode_attr(&r[16 + 40..]).unwrap();
    assert_eq!(a.mode, libc::S_IFREG | 0o600);
    assert_eq!(a.size, 5);
    let read = ReadIn {
        fh: 0,
        offset: 1,
        size: 100,
    };
    let r = reply_of(s.handle(&header(op::READ, 5, a.ino, &read.encode())));
    assert_eq!(&r[16..], b"lpha");
    let r = reply_of(s.handle(&header(op::LOOKUP, 6, vol, b"nope\0")));
    assert_eq!(decode_out_header(&r), Some((16, -libc::ENOENT, 6)));
}

#[test]
fn readdir_statfs_and_fixed_answers() {
    let (s, vol) = server(ConnState::adopted(40));
    let rd = ReadIn {
        fh: 0,
        offset: 0,
        size: 4096,
    };
    let r = reply_of(s.handle(&header(op::READDIR, 7, vol, &rd.encode())));
    let names: Vec<Vec<u8>> = decode_dirents(&r[16..])
        .unwrap()
        .into_iter()
        .map(|e| e.3)
        .collect();
    assert_eq!(names, [&b"."[..], b"..", b"a", b"d"]);
    // A small buffer takes only what fits; the next call resumes at the last offset.
    let small = ReadIn { size: 70, ..rd };
    let r = reply_of(s.handle(&header(op::READDIR, 8, vol, &small.encode())));
    let part = decode_dirents(&r[16..]).unwrap();
    assert_eq!(part.len(), 2);
    let next = ReadIn {
        offset: part[1].1,
        ..rd
    };
    let r = reply_of(s.handle(&header(op::READDIR, 9, vol, &next.encode())));
    assert_eq!(decode_dirents(&r[16..]).unwrap()[0].3, b"a");

    let r = reply_of(s.handle(&header(op::STATFS, 10, 1, &[])));
    assert_eq!(Statfs::decode(&r[16..]).unwrap().namelen, 255);
    for (code, errno) in [
        (op::OPEN, libc::ENOSYS),
        (op::OPENDIR, libc::ENOSYS),
        (op::FLUSH, libc::ENOSYS),
        (op::GETXATTR, libc::ENOSYS),
        (op::LISTXATTR, libc::ENOSYS),
        (op::ACCESS, libc::ENOSYS),
        (999, libc::ENOSYS),
        (op::SETATTR, libc::EROFS),
        (op::WRITE, libc::EROFS),
        (op::MKDIR, libc::EROFS),
        (op::CREATE, libc::EROFS),
        (op::RENAME2, libc::EROFS),
        (op::COPY_FILE_RANGE, libc::EROFS),
        (op::RELEASE, 0),
        (op::RELEASEDIR, 0),
    ] {
        let r = reply_of(s.handle(&header(code, 11, vol, &[0; 64])));
        assert_eq!(
            decode_out_header(&r),
            Some((16, -errno, 11)),
            "opcode {code}"
        );
    }
    for code in [op::FORGET, op::INTERRUPT] {
        assert_eq!(s.handle(&header(code, 12, vol, &[0; 16])), Outcome::Silent);
    }
    assert!(matches!(
        s.handle(&header(op::DESTROY, 13, 0, &[])),
        Outcome::ReplyAndStop(_)
    ));
}

#[test]
fn conn_state_persists_as_plain_data() {
    let s = ConnState::adopted(40);
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<ConnState>(&json).unwrap(), s);
    assert!(!ConnState::fresh().is_initialized());
    let _ = SystemTime::now();
}

#[test]
fn wait_init_reports_adopted_refused_and_timed_out() {
    let (s, _) = server(ConnState::adopted(40));
    assert_eq!(s.wait_init(Duration::ZERO).unwrap(), ConnState::adopted(40));
    let (s, _) = server(ConnState::fresh());
    let e = s.wait_init(Duration::from_millis(10)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    // A refused INIT settles at once, as an error naming the versions.
    let mut init = Vec::new();
    for v in [7u32, 8, 0x20000, 0] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    let _ = s.handle(&header(op::INIT, 1, 0, &init));
    let e = s.wait_init(Duration::from_secs(5)).unwrap_err().to_string();
    assert!(e.contains("7.8"), "{e}");
}

#[test]
fn fault_injection_stalls_only_reads_of_the_named_file() {
    let (mut s, vol) = server(ConnState::adopted(40));
    s.stall_read = Some("b".into());
    let lookup = |parent, name: &[u8]| {
        let r = reply_of(s.handle(&header(op::LOOKUP, 2, parent, name)));
        decode_attr(&r[16 + 40..]).unwrap().ino
    };
    let a = lookup(vol, b"a\0");
    let d = lookup(vol, b"d\0");
    let b = lookup(d, b"b\0");
    assert_eq!(s.fs.node_name(b).as_deref(), Some("b"));
    assert_eq!(s.fs.node_name(d).as_deref(), Some("d"));
    assert_eq!(s.fs.node_name(crate::fs::ROOT_INO), None);
    let read = ReadIn {
        fh: 0,
        offset: 0,
        size: 100,
    };
    assert_eq!(
        s.handle(&header(op::READ, 3, b, &read.encode())),
        Outcome::Stall("b".into())
    );
    let r = reply_of(s.handle(&header(op::READ, 4, a, &read.encode())));
    assert_eq!(&r[16..], b"alpha");
}
