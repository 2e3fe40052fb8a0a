//! The fs logic stage: a read-only filesystem over the cache, without FUSE in the loop.
//!
//! One filesystem (one FUSE connection, the "hub") serves every volume of the process: the hub
//! root lists one directory per volume, named by volume id, and each target is a bind mount of
//! its volume's directory. This keeps threads and file descriptors constant as volumes grow.
//!
//! # Inode numbers
//!
//! ```text
//!  63        40 39        24 23         0
//! +------------+------------+------------+
//! |  slot (24) |  node (16) |  gen (24)  |     1 = hub root
//! +------------+------------+------------+
//! ```
//!
//! `slot` identifies the volume, `node` the file or directory in its fixed layout, `gen` the
//! version of a file's content (0 for directories). Every new version of a file is a new inode
//! whose content never changes, so the kernel's page cache can never mix two versions (in-place
//! invalidation was measured to tear reads: docs/design.md). Numbers are derived, not allocated,
//! so a successor process can decode any inode the kernel still holds.
//!
//! # Lookup counts
//!
//! Each inode handed to the kernel is recorded with its lookup count and, for files, the exact
//! version it names. Old versions stay readable for fds opened before a rotation and are dropped
//! (and wiped) when the kernel forgets the inode. Only inodes recorded here are ever named in a
//! kernel notification.
//!
//! This module uses fuser's plain value types (`FileAttr`, `FileType`) and nothing else of it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fuser::{FileAttr, FileType, INodeNo};

use crate::cache::{CachedVolume, ChangeSet, DIR_MODE, NodeKind, SecretCache};
use crate::secret::SecretBytes;

/// Inode number of the hub root.
pub const ROOT_INO: u64 = 1;
const HUB_ROOT_MODE: u16 = 0o700;

/// A decoded inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ino {
    /// Volume slot (never 0).
    pub slot: u32,
    /// Node index within the volume's layout.
    pub node: u16,
    /// Content generation (0 for directories).
    pub generation: u32,
}

impl Ino {
    /// The inode number.
    pub fn encode(self) -> u64 {
        (u64::from(self.slot) << 40) | (u64::from(self.node) << 24) | u64::from(self.generation)
    }

    /// Decodes an inode number of a volume node (`None` for the hub root and invalid numbers).
    pub fn decode(ino: u64) -> Option<Self> {
        let slot = u32::try_from(ino >> 40).ok()?;
        if slot == 0 {
            return None;
        }
        Some(Self {
            slot,
            node: u16::try_from((ino >> 24) & 0xffff).ok()?,
            generation: u32::try_from(ino & 0xff_ffff).ok()?,
        })
    }
}

/// Errors of the filesystem logic; the FUSE loop maps them to errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// No such name.
    #[error("no such file or directory")]
    NotFound,
    /// The inode is not (or no longer) known.
    #[error("stale inode")]
    Stale,
    /// A directory operation on a file.
    #[error("not a directory")]
    NotDir,
    /// A file operation on a directory.
    #[error("is a directory")]
    IsDir,
    /// Any modification.
    #[error("read-only filesystem")]
    ReadOnly,
}

impl FsError {
    /// The errno the kernel gets.
    pub fn errno(self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Stale => libc::ESTALE,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
        }
    }
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// Offset of the next entry.
    pub next_offset: u64,
    /// File or directory.
    pub kind: FileType,
    /// Name.
    pub name: String,
}

/// Bytes to answer a read with: the version's buffer and the requested range.
#[derive(Debug, Clone)]
pub struct ReadData {
    value: SecretBytes,
    start: usize,
    end: usize,
}

impl ReadData {
    /// The bytes to copy into the reply.
    pub fn bytes(&self) -> &[u8] {
        &self.value.expose()[self.start..self.end]
    }
}

/// A kernel notification that makes a rotated file's name resolve to its new inode: the
/// invalidator thread sends it as FUSE_NOTIFY_DELETE(parent, child, name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// Parent directory inode.
    pub parent: u64,
    /// The old version's inode.
    pub child: u64,
    /// The file's name in `parent`.
    pub name: String,
}

#[derive(Debug)]
struct Live {
    /// References counted by this process.
    nlookup: u64,
    /// The kernel got this inode from a predecessor process, with a count we do not know.
    inherited: bool,
    /// For files: the exact version this inode names, with its attributes.
    file: Option<(SecretBytes, FileAttr)>,
}

impl Live {
    /// One more kernel reference; the first one of a file inode pins the version it names.
    fn record_lookup(&mut self, value: Option<SecretBytes>, attr: FileAttr) {
        self.nlookup += 1;
        if self.file.is_none() {
            self.file = value.map(|v| (v, attr));
        }
    }
}

/// The read-only filesystem over a `SecretCache`.
#[derive(Debug)]
pub struct Fs {
    cache: Arc<SecretCache>,
    live: Mutex<HashMap<u64, Live>>,
    started: SystemTime,
}

impl Fs {
    /// A filesystem serving every volume of `cache`.
    pub fn new(cache: Arc<SecretCache>) -> Self {
        Self {
            cache,
            live: Mutex::new(HashMap::new()),
            started: SystemTime::now(),
        }
    }

    /// The cache this filesystem serves.
    pub fn cache(&self) -> &Arc<SecretCache> {
        &self.cache
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn root_attr(&self) -> FileAttr {
        dir_attr(ROOT_INO, 0, 0, HUB_ROOT_MODE, self.started)
    }

    fn volume(&self, ino: Ino) -> Result<Arc<CachedVolume>, FsError> {
        self.cache.by_slot(ino.slot).ok_or(FsError::Stale)
    }

    /// Attributes of `ino` as the current snapshot describes it (files only if `ino` names the
    /// current version).
    fn current_attr(&self, ino: Ino) -> Result<(FileAttr, Option<SecretBytes>), FsError> {
        let vol = self.volume(ino)?;
        self.current_attr_of(&vol, ino)
    }

    fn current_attr_of(
        &self,
        vol: &CachedVolume,
        ino: Ino,
    ) -> Result<(FileAttr, Option<SecretBytes>), FsError> {
        let node = vol.layout.node(ino.node).ok_or(FsError::Stale)?;
        let own = vol.ownership;
        match node.kind {
            NodeKind::Dir { .. } if ino.generation == 0 => Ok((
                dir_attr(
                    ino.encode(),
                    own.uid,
                    own.gid,
                    DIR_MODE as u16,
                    vol.created_at,
                ),
                None,
            )),
            NodeKind::File { mode } => {
                let snap = vol.snapshot();
                let version = snap.version(ino.node).ok_or(FsError::Stale)?;
                if version.generation != ino.generation {
                    return Err(FsError::Stale);
                }
                let attr = FileAttr {
                    ino: INodeNo(ino.encode()),
                    size: version.value.len() as u64,
                    blocks: (version.value.len() as u64).div_ceil(512),
                    atime: version.fetched_at,
                    mtime: version.fetched_at,
                    ctime: version.fetched_at,
                    crtime: version.fetched_at,
                    kind: FileType::RegularFile,
                    perm: (mode & 0o777) as u16,
                    nlink: 1,
                    uid: own.uid,
                    gid: own.gid,
                    rdev: 0,
                    blksize: 4096,
                    flags: 0,
                };
                Ok((attr, Some(version.value.clone())))
            }
            NodeKind::Dir { .. } => Err(FsError::Stale),
        }
    }

    /// The inode `name` in directory `parent` names right now.
    fn resolve(&self, parent: u64, name: &str) -> Result<Ino, FsError> {
        if parent == ROOT_INO {
            let vol = self.cache.by_id(name).ok_or(FsError::NotFound)?;
            return Ok(Ino {
                slot: vol.slot,
                node: 0,
                generation: 0,
            });
        }
        let p = Ino::decode(parent).ok_or(FsError::Stale)?;
        let vol = self.volume(p)?;
        match vol.layout.node(p.node).map(|n| &n.kind) {
            Some(NodeKind::Dir { .. }) => {}
            Some(NodeKind::File { .. }) => return Err(FsError::NotDir),
            None => return Err(FsError::Stale),
        }
        let idx = vol.layout.child(p.node, name).ok_or(FsError::NotFound)?;
        let generation = match vol.layout.node(idx).map(|n| &n.kind) {
            Some(NodeKind::File { .. }) => vol
                .snapshot()
                .version(idx)
                .map(|v| v.generation)
                .ok_or(FsError::NotFound)?,
            _ => 0,
        };
        Ok(Ino {
            slot: p.slot,
            node: idx,
            generation,
        })
    }

    /// Resolves `name` in directory `parent` and records one kernel reference to the result.
    ///
    /// Race with a rotation: the poller swaps the snapshot, then asks `invalidations`, which
    /// reads the recorded inodes. Here we record first, then re-check the snapshot. Both sides
    /// take the `live` lock, so either the poller sees our record (and invalidates the name
    /// after we reply: the kernel orders that after our lookup), or we see its new snapshot and
    /// answer with the new version. Without the re-check, a lookup racing a rotation could pin
    /// the old version for a whole entry TTL.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, FsError> {
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let child = self.resolve(parent, name)?;
            let (attr, value) = match self.current_attr(child) {
                // Rotated between resolve and here: resolve again.
                Err(FsError::Stale) if child.generation != 0 && attempts < 100 => continue,
                other => other?,
            };
            self.live()
                .entry(child.encode())
                .or_insert_with(|| Live {
                    nlookup: 0,
                    inherited: false,
                    file: None,
                })
                .record_lookup(value, attr);
            if child.generation == 0 || attempts >= 100 {
                return Ok(attr);
            }
            match self.resolve(parent, name) {
                Ok(now) if now == child => return Ok(attr),
                _ => self.forget(child.encode(), 1),
            }
        }
    }

    /// The kernel dropped `n` references to `ino`. At zero, an old version is released (and
    /// wiped once no snapshot holds it either).
    ///
    /// An inherited inode's count includes references a predecessor process gave out, which we
    /// do not know. The kernel forgets an evicted inode with its whole count in one message, so
    /// a forget larger than what we gave out means the inode is gone.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut live = self.live();
        if let Some(entry) = live.get_mut(&ino) {
            let gone = if entry.inherited {
                n > entry.nlookup
            } else {
                n >= entry.nlookup
            };
            if gone {
                live.remove(&ino);
            } else {
                entry.nlookup -= n;
            }
        }
    }

    /// Records that the kernel may hold inodes of volume `slot` from a predecessor process: the
    /// files' inodes at `generations` (node, generation). They are then retired with kernel
    /// notifications on the next rotation like inodes this process handed out, and, once
    /// `adopt_values` ran, old versions stay readable through fds opened before the restart.
    pub fn inherit(&self, slot: u32, generations: &[(u16, u32)]) {
        let mut live = self.live();
        for &(node, generation) in generations {
            live.entry(
                Ino {
                    slot,
                    node,
                    generation,
                }
                .encode(),
            )
            .or_insert(Live {
                nlookup: 0,
                inherited: true,
                file: None,
            })
            .inherited = true;
        }
    }

    /// Drops what `inherit` recorded for volume `slot` that this process never handed out
    /// (the volume is unpublished): their values are wiped with the volume's.
    pub fn release_inherited(&self, slot: u32) {
        self.live().retain(|ino, entry| {
            !(entry.inherited
                && entry.nlookup == 0
                && Ino::decode(*ino).is_some_and(|d| d.slot == slot))
        });
    }

    /// Gives the inherited inodes of volume `slot` (`generations`, as given to `inherit`) that
    /// name the current version its value, so they keep serving it after a later rotation.
    /// Looks up only those inodes: a takeover calls this for every volume.
    pub fn adopt_values(&self, slot: u32, generations: &[(u16, u32)]) {
        let Some(vol) = self.cache.by_slot(slot) else {
            return;
        };
        let mut live = self.live();
        for &(node, generation) in generations {
            let ino = Ino {
                slot,
                node,
                generation,
            };
            let Some(entry) = live.get_mut(&ino.encode()) else {
                continue;
            };
            if !entry.inherited || entry.file.is_some() {
                continue;
            }
            if let Ok((attr, Some(value))) = self.current_attr_of(&vol, ino) {
                entry.file = Some((value, attr));
            }
        }
    }

    /// The notifications that make every file of volume `slot` drop an entry the kernel may
    /// have cached for `generation + 1` or `+ 2` of `generations`: versions a crashed process
    /// handed out before checkpointing them (a predecessor between its snapshot swap and its
    /// checkpoint; a successor that died during its takeover). Harmless when the kernel holds
    /// no such entry: it only drops a dentry that names exactly that inode.
    pub fn restart_invalidations(
        &self,
        slot: u32,
        generations: &[(u16, u32)],
    ) -> Vec<Invalidation> {
        let Some(vol) = self.cache.by_slot(slot) else {
            return Vec::new();
        };
        let current = vol.snapshot();
        let next = |g: u32| {
            if g >= crate::cache::MAX_GENERATION {
                1
            } else {
                g + 1
            }
        };
        let mut out = Vec::new();
        for &(node, generation) in generations {
            let Some(n) = vol.layout.node(node) else {
                continue;
            };
            let now = current.version(node).map(|v| v.generation);
            let first = next(generation);
            for ghost in [first, next(first)] {
                if now == Some(ghost) {
                    continue;
                }
                out.push(Invalidation {
                    parent: Ino {
                        slot,
                        node: n.parent,
                        generation: 0,
                    }
                    .encode(),
                    child: Ino {
                        slot,
                        node,
                        generation: ghost,
                    }
                    .encode(),
                    name: n.name.clone(),
                });
            }
        }
        out
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<FileAttr, FsError> {
        if ino == ROOT_INO {
            return Ok(self.root_attr());
        }
        if let Some((_, attr)) = self.live().get(&ino).and_then(|l| l.file.as_ref()) {
            return Ok(*attr);
        }
        let decoded = Ino::decode(ino).ok_or(FsError::Stale)?;
        self.current_attr(decoded).map(|(attr, _)| attr)
    }

    /// Up to `size` bytes of `ino` from `offset`: always from the one version `ino` names.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<ReadData, FsError> {
        let live_value = self
            .live()
            .get(&ino)
            .and_then(|l| l.file.as_ref().map(|(v, _)| v.clone()));
        let value = match live_value {
            Some(v) => v,
            None => {
                if ino == ROOT_INO {
                    return Err(FsError::IsDir);
                }
                let decoded = Ino::decode(ino).ok_or(FsError::Stale)?;
                match self.current_attr(decoded)? {
                    (_, Some(v)) => v,
                    (_, None) => return Err(FsError::IsDir),
                }
            }
        };
        let len = value.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let end = start.saturating_add(size as usize).min(len);
        Ok(ReadData { value, start, end })
    }

    /// Entries of directory `ino` after `offset` (0 = from the start, then each entry's
    /// `next_offset`). "." and ".." come first.
    pub fn readdir(&self, ino: u64, offset: u64) -> Result<Vec<DirEntry>, FsError> {
        let mut entries: Vec<(u64, FileType, String)> = Vec::new();
        if ino == ROOT_INO {
            entries.push((ROOT_INO, FileType::Directory, ".".into()));
            entries.push((ROOT_INO, FileType::Directory, "..".into()));
            for (id, slot) in self.cache.ids() {
                let vino = Ino {
                    slot,
                    node: 0,
                    generation: 0,
                };
                entries.push((vino.encode(), FileType::Directory, id));
            }
        } else {
            let d = Ino::decode(ino).ok_or(FsError::Stale)?;
            let vol = self.volume(d)?;
            let node = vol.layout.node(d.node).ok_or(FsError::Stale)?;
            let NodeKind::Dir { children } = &node.kind else {
                return Err(FsError::NotDir);
            };
            let parent = if d.node == 0 {
                ROOT_INO
            } else {
                Ino {
                    node: node.parent,
                    generation: 0,
                    ..d
                }
                .encode()
            };
            entries.push((ino, FileType::Directory, ".".into()));
            entries.push((parent, FileType::Directory, "..".into()));
            let snap = vol.snapshot();
            for (name, idx) in children {
                let (kind, generation) = match vol.layout.node(*idx).map(|n| &n.kind) {
                    Some(NodeKind::File { .. }) => (
                        FileType::RegularFile,
                        snap.version(*idx).map_or(0, |v| v.generation),
                    ),
                    _ => (FileType::Directory, 0),
                };
                let cino = Ino {
                    slot: d.slot,
                    node: *idx,
                    generation,
                };
                entries.push((cino.encode(), kind, name.clone()));
            }
        }
        Ok(entries
            .into_iter()
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .map(|(i, (ino, kind, name))| DirEntry {
                ino,
                next_offset: i as u64 + 1,
                kind,
                name,
            })
            .collect())
    }

    /// The notifications that retire the old inodes of `changes`, limited to inodes the kernel
    /// holds. To be sent after the new snapshot is published, outside any FUSE callback.
    pub fn invalidations(&self, changes: &ChangeSet) -> Vec<Invalidation> {
        let Some(vol) = self.cache.by_slot(changes.slot) else {
            return Vec::new();
        };
        let live = self.live();
        changes
            .changed
            .iter()
            .filter_map(|c| {
                let old = Ino {
                    slot: changes.slot,
                    node: c.node,
                    generation: c.old_generation,
                }
                .encode();
                if !live.contains_key(&old) {
                    return None;
                }
                let node = vol.layout.node(c.node)?;
                let parent = Ino {
                    slot: changes.slot,
                    node: node.parent,
                    generation: 0,
                }
                .encode();
                Some(Invalidation {
                    parent,
                    child: old,
                    name: node.name.clone(),
                })
            })
            .collect()
    }

    /// Drops every recorded inode and its values (shutdown, after unmount).
    pub fn clear(&self) {
        self.live().clear();
    }

    /// The name of `ino`'s node in its volume's layout (the last path component; empty for a
    /// volume's root directory), whatever its generation. `None` for the hub root, an
    /// invalid number or a removed volume. For diagnostics and test-only fault injection.
    pub fn node_name(&self, ino: u64) -> Option<String> {
        let d = Ino::decode(ino)?;
        let vol = self.cache.by_slot(d.slot)?;
        vol.layout.node(d.node).map(|n| n.name.clone())
    }

    /// Number of inodes the kernel currently holds (diagnostics, tests).
    pub fn live_inodes(&self) -> usize {
        self.live().len()
    }
}

fn dir_attr(ino: u64, uid: u32, gid: u32, perm: u16, time: SystemTime) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind: FileType::Directory,
        perm,
        nlink: 2,
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Layout;
    use crate::cache::tests::{fetched, objects};
    use crate::volume::Ownership;

    fn setup(values: &[&str]) -> (Fs, Arc<CachedVolume>, Vec<crate::spc::ObjectSpec>) {
        let objs = objects(&[("a", None), ("dir/b", Some(0o400))]);
        let cache = Arc::new(SecretCache::new());
        let vol = cache
            .insert(
                "vol",
                Layout::new("vol", &objs).expect("layout"),
                Ownership { uid: 10, gid: 20 },
                fetched(&objs, values),
            )
            .expect("insert");
        (Fs::new(cache), vol, objs)
    }

    fn read_all(fs: &Fs, ino: u64) -> Vec<u8> {
        fs.read(ino, 0, 1 << 20).expect("read").bytes().to_vec()
    }

    #[test]
    fn inherited_inodes_are_invalidated_kept_readable_and_forgotten_on_eviction() {
        use crate::cache::PriorVersion;
        let objs = objects(&[("a", None)]);
        let cache = Arc::new(SecretCache::new());
        let layout = Layout::new("vol", &objs).expect("layout");
        let node = layout.object_node(0).expect("a");
        let t = SystemTime::UNIX_EPOCH;
        let vol = cache
            .restore(
                "vol",
                9,
                layout,
                Ownership::default(),
                t,
                vec![PriorVersion {
                    node,
                    generation: 3,
                    id: "v-old".into(),
                    fetched_at: t,
                }],
            )
            .expect("restore");
        let fs = Fs::new(Arc::clone(&cache));
        fs.inherit(9, &[(node, 3)]);
        let mut values = fetched(&objs, &["old"]);
        values[0].version = "v-old".into();
        assert!(vol.replace(values).expect("replace").is_empty());
        fs.adopt_values(9, &[(node, 3)]);
        let old = Ino {
            slot: 9,
            node,
            generation: 3,
        }
        .encode();
        // The predecessor's inode serves without a lookup from us.
        assert_eq!(read_all(&fs, old), b"old");
        // A ghost generation 4 may be cached by the kernel: it gets a delete notification.
        let ghosts = fs.restart_invalidations(9, &[(node, 3)]);
        let gens: Vec<u64> = ghosts.iter().map(|g| g.child & 0xff_ffff).collect();
        assert_eq!(gens, [4, 5]);
        // A rotation retires the inherited inode although we never handed it out ...
        let cs = vol.replace(fetched(&objs, &["new"])).expect("replace");
        let inv = fs.invalidations(&cs);
        assert_eq!(inv.len(), 1);
        assert_eq!(inv[0].child, old);
        // ... and fds opened before the restart keep reading the old version.
        assert_eq!(read_all(&fs, old), b"old");
        // One lookup of ours plus unknown ones of the predecessor: a forget of exactly ours is
        // partial, a larger one is the eviction.
        fs.live().get_mut(&old).expect("live").nlookup = 1;
        fs.forget(old, 1);
        assert_eq!(fs.live_inodes(), 1);
        fs.forget(old, 2);
        assert_eq!(fs.live_inodes(), 0);
        // Inherited inodes never referenced by us go with the volume.
        fs.inherit(9, &[(node, 9)]);
        fs.inherit(10, &[(node, 1)]);
        fs.release_inherited(9);
        assert_eq!(fs.live_inodes(), 1, "only slot 10's is left");
        assert_eq!(fs.read(old, 0, 10).map(|_| ()), Err(FsError::Stale));
    }

    #[test]
    fn ino_roundtrip() {
        let i = Ino {
            slot: 0xab_cdef,
            node: 0x1234,
            generation: 0x56_789a,
        };
        assert_eq!(Ino::decode(i.encode()), Some(i));
        assert_eq!(Ino::decode(ROOT_INO), None);
    }

    #[test]
    fn lookup_getattr_read_readdir() {
        let (fs, _vol, _) = setup(&["one", "two!"]);
        let v = fs.lookup(ROOT_INO, OsStr::new("vol")).expect("vol");
        assert_eq!(v.kind, FileType::Directory);
        assert_eq!((v.uid, v.gid), (10, 20));
        let a = fs.lookup(v.ino.0, OsStr::new("a")).expect("a");
        assert_eq!((a.size, a.perm, a.kind), (3, 0o644, FileType::RegularFile));
        let d = fs.lookup(v.ino.0, OsStr::new("dir")).expect("dir");
        let b = fs.lookup(d.ino.0, OsStr::new("b")).expect("b");
        assert_eq!((b.size, b.perm), (4, 0o400));
        assert_eq!(read_all(&fs, b.ino.0), b"two!");
        assert_eq!(fs.read(b.ino.0, 1, 2).expect("read").bytes(), b"wo");
        assert_eq!(fs.read(b.ino.0, 9, 2).expect("read").bytes(), b"");
        assert_eq!(fs.getattr(a.ino.0).expect("attr"), a);
        assert_eq!(fs.lookup(v.ino.0, OsStr::new("x")), Err(FsError::NotFound));
        assert_eq!(fs.lookup(a.ino.0, OsStr::new("x")), Err(FsError::NotDir));
        assert_eq!(fs.read(d.ino.0, 0, 1).map(|_| ()), Err(FsError::IsDir));
        let names: Vec<String> = fs
            .readdir(v.ino.0, 0)
            .expect("readdir")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, [".", "..", "a", "dir"]);
        let rest = fs.readdir(v.ino.0, 3).expect("readdir");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].name, "dir");
        let root: Vec<String> = fs
            .readdir(ROOT_INO, 0)
            .expect("root")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(root, [".", "..", "vol"]);
    }

    #[test]
    fn rotation_gives_new_inode_and_old_one_keeps_its_bytes() {
        let (fs, vol, objs) = setup(&["one", "two"]);
        let v = fs.lookup(ROOT_INO, OsStr::new("vol")).expect("vol");
        let a1 = fs.lookup(v.ino.0, OsStr::new("a")).expect("a");
        let changes = vol
            .replace(fetched(&objs, &["ONE-NEW", "two"]))
            .expect("replace");
        let inv = fs.invalidations(&changes);
        assert_eq!(
            inv,
            [Invalidation {
                parent: v.ino.0,
                child: a1.ino.0,
                name: "a".into()
            }]
        );
        // The kernel still holds the old inode: it reads the old bytes in full.
        assert_eq!(read_all(&fs, a1.ino.0), b"one");
        assert_eq!(fs.getattr(a1.ino.0).expect("old attr").size, 3);
        // A new lookup names the new version.
        let a2 = fs.lookup(v.ino.0, OsStr::new("a")).expect("a");
        assert_ne!(a1.ino, a2.ino);
        assert_eq!(read_all(&fs, a2.ino.0), b"ONE-NEW");
        // Once forgotten, the old inode is gone.
        fs.forget(a1.ino.0, 1);
        assert_eq!(fs.read(a1.ino.0, 0, 10).map(|_| ()), Err(FsError::Stale));
    }

    #[test]
    fn invalidations_only_for_inodes_the_kernel_holds() {
        let (fs, vol, objs) = setup(&["one", "two"]);
        let changes = vol.replace(fetched(&objs, &["x", "y"])).expect("replace");
        assert_eq!(changes.changed.len(), 2);
        assert!(fs.invalidations(&changes).is_empty());
    }

    #[test]
    fn removed_volume_is_stale_and_clear_drops_everything() {
        let (fs, _vol, _) = setup(&["one", "two"]);
        let v = fs.lookup(ROOT_INO, OsStr::new("vol")).expect("vol");
        let a = fs.lookup(v.ino.0, OsStr::new("a")).expect("a");
        fs.cache().remove("vol");
        assert_eq!(fs.lookup(v.ino.0, OsStr::new("a")), Err(FsError::Stale));
        // An inode the kernel still holds keeps serving its version until forgotten.
        assert_eq!(read_all(&fs, a.ino.0), b"one");
        fs.clear();
        assert_eq!(fs.live_inodes(), 0);
        assert_eq!(fs.read(a.ino.0, 0, 1).map(|_| ()), Err(FsError::Stale));
    }
}
