//! The cache stage: every mounted volume's current secret values, in memory only.
//!
//! Each volume has a fixed `Layout` (its directories and files, from the SPC's objects) and a
//! current `Snapshot` (one immutable `Version` per file). The poller builds a new snapshot and
//! swaps it in atomically (`ArcSwap`): readers never take a lock the poller holds, and a reader
//! sees either the old snapshot or the new one, never a mix.
//!
//! A file's version changes only when its bytes change; each new version gets the next
//! generation number, which the fs layer turns into a new inode (see `fs`). `replace` reports
//! what changed as a `ChangeSet`, which drives kernel invalidation and, later, Secret sync,
//! pod status and events.
//!
//! This module imports nothing of FUSE, HTTP, gRPC or Kubernetes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::provider::FetchedObject;
use crate::secret::SecretBytes;
use crate::spc::{ObjectPath, ObjectSpec};
use crate::volume::Ownership;

/// Largest volume slot number (24 bits; see `fs::Ino`).
pub const MAX_SLOT: u32 = (1 << 24) - 1;
/// Largest node index in one volume (16 bits; see `fs::Ino`).
pub const MAX_NODES: usize = 1 << 16;
/// Generations wrap within 24 bits, skipping 0 (reserved for directories).
pub const MAX_GENERATION: u32 = (1 << 24) - 1;

/// Default mode of a secret file (upstream's 0644).
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// Mode of the directories of a volume.
pub const DIR_MODE: u32 = 0o755;

/// Errors of the cache layer.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Too many files and directories in one volume.
    #[error("volume '{volume}' has more than {MAX_NODES} files and directories")]
    TooManyNodes {
        /// The volume id.
        volume: String,
    },
    /// Too many volumes.
    #[error("no free volume slot (at most {MAX_SLOT} volumes)")]
    NoFreeSlot,
    /// The volume id cannot be a directory name.
    #[error("volume id '{0}' is not a valid name (1-255 of [A-Za-z0-9._-], not '.' or '..')")]
    InvalidVolumeId(String),
    /// A volume with this id is already cached.
    #[error("volume '{0}' is already published")]
    AlreadyExists(String),
    /// A fetch result does not match the layout (programming error, reported not panicked).
    #[error("fetched objects do not match the layout of volume '{volume}': {detail}")]
    LayoutMismatch {
        /// The volume id.
        volume: String,
        /// What did not match.
        detail: String,
    },
}

/// What a node of a volume's tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory with its children, sorted by name.
    Dir {
        /// (name, node index), sorted by name.
        children: Vec<(String, u16)>,
    },
    /// A secret file.
    File {
        /// Permission bits.
        mode: u32,
    },
}

/// One node of a volume's tree. Node 0 is the volume's root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Last path component (empty for the root).
    pub name: String,
    /// Index of the parent directory (0 for the root itself).
    pub parent: u16,
    /// Directory or file.
    pub kind: NodeKind,
}

/// The fixed tree of a volume, built once from its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    nodes: Vec<Node>,
    /// Node index of each object, in the order of the SPC's objects.
    object_nodes: Vec<u16>,
}

impl Layout {
    /// Builds the tree of `objects`. Paths were validated by the SPC parser (relative, unique,
    /// no file that is also a directory).
    pub fn new(volume: &str, objects: &[ObjectSpec]) -> Result<Self, CacheError> {
        let too_many = || CacheError::TooManyNodes {
            volume: volume.to_owned(),
        };
        // Collect every directory and file path first, so indices are deterministic: sorted by
        // path, which keeps inode numbers stable for the same SPC across restarts.
        let mut paths: BTreeMap<Vec<String>, Option<u32>> = BTreeMap::new();
        for obj in objects {
            let comps: Vec<String> = obj.path.components().map(str::to_owned).collect();
            for i in 1..comps.len() {
                paths.entry(comps[..i].to_vec()).or_insert(None);
            }
            paths.insert(comps, Some(obj.mode.unwrap_or(DEFAULT_FILE_MODE)));
        }
        if paths.len() + 1 > MAX_NODES {
            return Err(too_many());
        }
        let mut nodes = vec![Node {
            name: String::new(),
            parent: 0,
            kind: NodeKind::Dir {
                children: Vec::new(),
            },
        }];
        let mut index: HashMap<Vec<String>, u16> = HashMap::new();
        for (comps, mode) in &paths {
            let idx = u16::try_from(nodes.len()).map_err(|_| too_many())?;
            let parent = if comps.len() == 1 {
                0
            } else {
                *index
                    .get(&comps[..comps.len() - 1])
                    .ok_or_else(|| CacheError::LayoutMismatch {
                        volume: volume.to_owned(),
                        detail: format!("missing parent of '{}'", comps.join("/")),
                    })?
            };
            let name = comps.last().cloned().unwrap_or_default();
            nodes.push(Node {
                name: name.clone(),
                parent,
                kind: match mode {
                    Some(mode) => NodeKind::File { mode: *mode },
                    None => NodeKind::Dir {
                        children: Vec::new(),
                    },
                },
            });
            if let NodeKind::Dir { children } = &mut nodes[usize::from(parent)].kind {
                children.push((name, idx));
            }
            index.insert(comps.clone(), idx);
        }
        for node in &mut nodes {
            if let NodeKind::Dir { children } = &mut node.kind {
                children.sort();
            }
        }
        let object_nodes = objects
            .iter()
            .map(|o| {
                let comps: Vec<String> = o.path.components().map(str::to_owned).collect();
                index.get(&comps).copied().ok_or_else(too_many)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            nodes,
            object_nodes,
        })
    }

    /// The node at `idx`.
    pub fn node(&self, idx: u16) -> Option<&Node> {
        self.nodes.get(usize::from(idx))
    }

    /// The child of directory `dir` called `name`.
    pub fn child(&self, dir: u16, name: &str) -> Option<u16> {
        match &self.node(dir)?.kind {
            NodeKind::Dir { children } => children
                .binary_search_by(|(n, _)| n.as_str().cmp(name))
                .ok()
                .map(|i| children[i].1),
            NodeKind::File { .. } => None,
        }
    }

    /// Number of nodes (directories and files, root included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the layout has only its root.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// Node index of the `i`-th object of the SPC.
    pub fn object_node(&self, i: usize) -> Option<u16> {
        self.object_nodes.get(i).copied()
    }
}

/// One immutable version of one file.
#[derive(Debug, Clone)]
pub struct Version {
    /// The bytes. Never changed in place.
    pub value: SecretBytes,
    /// Generation: 1 for the first version, +1 for each change (wrapping, never 0).
    pub generation: u32,
    /// When this version was fetched (the file's mtime and ctime).
    pub fetched_at: SystemTime,
    /// The provider's opaque version of the object (keyed hash of config and content, plus the
    /// KV v2 version): what status and SecretProviderClassPodStatus report. Reveals no value.
    pub id: String,
}

/// The current versions of every file of a volume. Immutable once built.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Indexed by node index; `None` for directories.
    versions: Vec<Option<Version>>,
}

impl Snapshot {
    /// The version of file node `idx`.
    pub fn version(&self, idx: u16) -> Option<&Version> {
        self.versions.get(usize::from(idx))?.as_ref()
    }
}

/// One file whose version changed in a `replace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The object's path.
    pub path: ObjectPath,
    /// Node index of the file.
    pub node: u16,
    /// Generation before the change.
    pub old_generation: u32,
    /// Generation after the change.
    pub new_generation: u32,
}

/// What a `replace` changed in one volume. Empty when every value was byte-identical.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// The volume's slot.
    pub slot: u32,
    /// Files with a new version, in object order.
    pub changed: Vec<Change>,
}

impl ChangeSet {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
    }
}

/// One cached volume: its identity, fixed layout and current snapshot.
#[derive(Debug)]
pub struct CachedVolume {
    /// Volume id; also its directory name in the FUSE hub.
    pub id: String,
    /// Slot number, part of every inode number of the volume.
    pub slot: u32,
    /// The fixed tree.
    pub layout: Layout,
    /// Owner of the files.
    pub ownership: Ownership,
    /// When the volume was first published (directory times).
    pub created_at: SystemTime,
    current: ArcSwap<Snapshot>,
    /// Serializes writers (publish vs poller); readers never take it. Holds what a predecessor
    /// process served, until the first values of a restored volume arrive.
    write: Mutex<Option<Vec<Option<PriorVersion>>>>,
}

/// A volume to re-create in its predecessor's slot (`SecretCache::restore_all`).
#[derive(Debug)]
pub struct Restore {
    /// The volume's hub name.
    pub id: String,
    /// Its slot (the high bits of its inode numbers).
    pub slot: u32,
    /// Its file tree, built from the same objects as before.
    pub layout: Layout,
    /// Owner of its files.
    pub ownership: Ownership,
    /// When it was first created.
    pub created_at: SystemTime,
    /// What the predecessor served, per file.
    pub prior: Vec<PriorVersion>,
}

/// What a predecessor process served for one file, from its checkpoint (no value): enough for
/// a successor to keep the file's inode when the refetched content is the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorVersion {
    /// Node index of the file.
    pub node: u16,
    /// The generation (inode) the predecessor served.
    pub generation: u32,
    /// Its version id (a keyed hash of configuration and content, same key across restarts).
    pub id: String,
    /// When the predecessor fetched it.
    pub fetched_at: SystemTime,
}

impl CachedVolume {
    /// The current snapshot (lock-free).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the values with `fetched` (one entry per object, in object order). Files whose
    /// bytes did not change keep their version (and inode); the rest get a new generation. The
    /// new snapshot is visible to readers when this returns.
    pub fn replace(&self, fetched: Vec<FetchedObject>) -> Result<ChangeSet, CacheError> {
        let mut writer = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let (next, changes, relabelled) =
            build_snapshot(self, Some(&old), writer.as_deref(), fetched)?;
        if writer.take().is_some() || !changes.is_empty() || relabelled {
            self.current.store(Arc::new(next));
        }
        Ok(ChangeSet {
            slot: self.slot,
            changed: changes,
        })
    }
}

impl CachedVolume {
    /// What a predecessor served for file `node`, while this restored volume has no value for
    /// it yet (so a checkpoint taken meanwhile still names the kernel's inode).
    pub fn prior_version(&self, node: u16) -> Option<PriorVersion> {
        let prior = self.write.lock().unwrap_or_else(|e| e.into_inner());
        prior.as_ref()?.get(usize::from(node))?.clone()
    }
}

fn next_generation(g: u32) -> u32 {
    if g >= MAX_GENERATION { 1 } else { g + 1 }
}

/// The next snapshot, the files whose bytes changed, and whether only version ids moved.
fn build_snapshot(
    vol: &CachedVolume,
    old: Option<&Snapshot>,
    prior: Option<&[Option<PriorVersion>]>,
    fetched: Vec<FetchedObject>,
) -> Result<(Snapshot, Vec<Change>, bool), CacheError> {
    let mismatch = |detail: String| CacheError::LayoutMismatch {
        volume: vol.id.clone(),
        detail,
    };
    if fetched.len() != vol.layout.object_nodes.len() {
        return Err(mismatch(format!(
            "{} objects fetched, {} expected",
            fetched.len(),
            vol.layout.object_nodes.len()
        )));
    }
    let now = SystemTime::now();
    let mut versions: Vec<Option<Version>> = vec![None; vol.layout.len()];
    let mut changes = Vec::new();
    let mut relabelled = false;
    for (i, obj) in fetched.into_iter().enumerate() {
        let node = vol.layout.object_nodes[i];
        if vol.layout.node(node).map(|n| n.name.as_str()) != obj.path.components().last() {
            return Err(mismatch(format!("object {i} is '{}'", obj.path)));
        }
        let previous = old.and_then(|s| s.version(node));
        let version = match previous {
            Some(prev) if prev.value.same_value(&obj.value) => {
                // Same bytes, same inode; only the reported id may move (a KV v2 write of an
                // equal value is a new KV version).
                relabelled |= prev.id != obj.version;
                Version {
                    id: obj.version,
                    ..prev.clone()
                }
            }
            Some(prev) => {
                let generation = next_generation(prev.generation);
                changes.push(Change {
                    path: obj.path.clone(),
                    node,
                    old_generation: prev.generation,
                    new_generation: generation,
                });
                Version {
                    value: obj.value,
                    generation,
                    fetched_at: now,
                    id: obj.version,
                }
            }
            None => match prior.and_then(|p| p.get(usize::from(node))?.as_ref()) {
                // Restored after a restart: the kernel may still hold the predecessor's inode.
                // Same content (same keyed version id): keep that inode.
                Some(p) if p.id == obj.version => Version {
                    value: obj.value,
                    generation: p.generation,
                    fetched_at: p.fetched_at,
                    id: obj.version,
                },
                // Changed while no process served it: skip one generation, which the
                // predecessor may have handed to the kernel without checkpointing it.
                Some(p) => {
                    let generation = next_generation(next_generation(p.generation));
                    changes.push(Change {
                        path: obj.path.clone(),
                        node,
                        old_generation: p.generation,
                        new_generation: generation,
                    });
                    Version {
                        value: obj.value,
                        generation,
                        fetched_at: now,
                        id: obj.version,
                    }
                }
                None => Version {
                    value: obj.value,
                    generation: 1,
                    fetched_at: now,
                    id: obj.version,
                },
            },
        };
        versions[usize::from(node)] = Some(version);
    }
    Ok((Snapshot { versions }, changes, relabelled))
}

/// Every cached volume, by slot and by id. Lookups are lock-free; publish and unpublish copy
/// the (small) index and swap it.
#[derive(Debug, Default)]
pub struct SecretCache {
    by_slot: ArcSwap<HashMap<u32, Arc<CachedVolume>>>,
    by_id: ArcSwap<HashMap<String, u32>>,
    write: Mutex<u32>,
}

/// Whether `id` can name a directory in the hub.
pub fn valid_volume_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl SecretCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a volume with its first values. The volume is readable when this returns.
    pub fn insert(
        &self,
        id: &str,
        layout: Layout,
        ownership: Ownership,
        fetched: Vec<FetchedObject>,
    ) -> Result<Arc<CachedVolume>, CacheError> {
        if !valid_volume_id(id) {
            return Err(CacheError::InvalidVolumeId(id.to_owned()));
        }
        let mut last_slot = self.write.lock().unwrap_or_else(|e| e.into_inner());
        if self.by_id.load().contains_key(id) {
            return Err(CacheError::AlreadyExists(id.to_owned()));
        }
        let slots = self.by_slot.load_full();
        let slot = (1..=MAX_SLOT)
            .map(|k| (*last_slot + k - 1) % MAX_SLOT + 1)
            .find(|s| !slots.contains_key(s))
            .ok_or(CacheError::NoFreeSlot)?;
        let mut vol = CachedVolume {
            id: id.to_owned(),
            slot,
            layout,
            ownership,
            created_at: SystemTime::now(),
            current: ArcSwap::from_pointee(Snapshot::default()),
            write: Mutex::new(None),
        };
        let (snapshot, _, _) = build_snapshot(&vol, None, None, fetched)?;
        vol.current = ArcSwap::from_pointee(snapshot);
        let vol = Arc::new(vol);
        let mut by_slot = (*slots).clone();
        by_slot.insert(slot, Arc::clone(&vol));
        let mut by_id = (*self.by_id.load_full()).clone();
        by_id.insert(id.to_owned(), slot);
        // Slot first: a reader that finds the id always finds the slot.
        self.by_slot.store(Arc::new(by_slot));
        self.by_id.store(Arc::new(by_id));
        *last_slot = slot;
        Ok(vol)
    }

    /// Re-creates a volume a predecessor process served, in the same `slot` (so every inode
    /// number the kernel holds still names the same file), without values yet: its files answer
    /// "not found" until the first `replace`, which keeps each prior generation whose version
    /// id is unchanged (see `PriorVersion`).
    pub fn restore(
        &self,
        id: &str,
        slot: u32,
        layout: Layout,
        ownership: Ownership,
        created_at: SystemTime,
        prior: Vec<PriorVersion>,
    ) -> Result<Arc<CachedVolume>, CacheError> {
        let one = Restore {
            id: id.to_owned(),
            slot,
            layout,
            ownership,
            created_at,
            prior,
        };
        self.restore_all(vec![one])
            .into_iter()
            .next()
            .unwrap_or(Err(CacheError::NoFreeSlot))
    }

    /// `restore` for many volumes at once (a takeover): the volume maps are copied once, not
    /// once per volume (1000 volumes one by one took 76 ms inside a handoff's gap, measured).
    /// One result per request, in order.
    pub fn restore_all(&self, volumes: Vec<Restore>) -> Vec<Result<Arc<CachedVolume>, CacheError>> {
        let mut last_slot = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_slot = (*self.by_slot.load_full()).clone();
        let mut by_id = (*self.by_id.load_full()).clone();
        let out = volumes
            .into_iter()
            .map(|r| {
                if !valid_volume_id(&r.id) {
                    return Err(CacheError::InvalidVolumeId(r.id));
                }
                if r.slot == 0 || r.slot > MAX_SLOT {
                    return Err(CacheError::NoFreeSlot);
                }
                if by_id.contains_key(&r.id) {
                    return Err(CacheError::AlreadyExists(r.id));
                }
                if by_slot.contains_key(&r.slot) {
                    return Err(CacheError::AlreadyExists(format!(
                        "{} (slot {})",
                        r.id, r.slot
                    )));
                }
                let mut by_node: Vec<Option<PriorVersion>> = vec![None; r.layout.len()];
                for p in r.prior {
                    if let Some(entry) = by_node.get_mut(usize::from(p.node)) {
                        *entry = Some(p);
                    }
                }
                let vol = Arc::new(CachedVolume {
                    id: r.id.clone(),
                    slot: r.slot,
                    layout: r.layout,
                    ownership: r.ownership,
                    created_at: r.created_at,
                    current: ArcSwap::from_pointee(Snapshot::default()),
                    write: Mutex::new(Some(by_node)),
                });
                by_slot.insert(r.slot, Arc::clone(&vol));
                by_id.insert(r.id, r.slot);
                *last_slot = (*last_slot).max(r.slot);
                Ok(vol)
            })
            .collect();
        self.by_slot.store(Arc::new(by_slot));
        self.by_id.store(Arc::new(by_id));
        out
    }

    /// Removes a volume. Its values are wiped once the kernel forgets the inodes still open.
    pub fn remove(&self, id: &str) -> Option<Arc<CachedVolume>> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let slot = *self.by_id.load().get(id)?;
        let mut by_id = (*self.by_id.load_full()).clone();
        by_id.remove(id);
        let mut by_slot = (*self.by_slot.load_full()).clone();
        let vol = by_slot.remove(&slot);
        self.by_id.store(Arc::new(by_id));
        self.by_slot.store(Arc::new(by_slot));
        vol
    }

    /// Removes every volume (shutdown).
    pub fn clear(&self) {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.by_id.store(Arc::new(HashMap::new()));
        self.by_slot.store(Arc::new(HashMap::new()));
    }

    /// The volume in `slot` (lock-free).
    pub fn by_slot(&self, slot: u32) -> Option<Arc<CachedVolume>> {
        self.by_slot.load().get(&slot).cloned()
    }

    /// The volume called `id` (lock-free).
    pub fn by_id(&self, id: &str) -> Option<Arc<CachedVolume>> {
        let slot = *self.by_id.load().get(id)?;
        self.by_slot(slot)
    }

    /// Ids of every volume, sorted (for directory listings of the hub root).
    pub fn ids(&self) -> Vec<(String, u32)> {
        let mut ids: Vec<(String, u32)> = self
            .by_id
            .load()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        ids.sort();
        ids
    }

    /// Number of cached volumes.
    pub fn len(&self) -> usize {
        self.by_slot.load().len()
    }

    /// Whether no volume is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spc::SecretProviderClass;

    pub(crate) fn objects(spec: &[(&str, Option<u32>)]) -> Vec<ObjectSpec> {
        let list: String = spec
            .iter()
            .map(|(name, mode)| {
                let mode = mode
                    .map(|m| format!(", filePermission: \"0{m:o}\""))
                    .unwrap_or_default();
                format!("  - {{objectName: \"{name}\", secretPath: \"secret/data/x\"{mode}}}\n")
            })
            .collect();
        let yaml = format!(
            "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: t\nspec:\n  provider: openbao\n  parameters:\n    roleName: r\n    vaultAddress: http://127.0.0.1:1\n    objects: |\n{}",
            list.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        );
        SecretProviderClass::from_yaml(&yaml)
            .expect("test SPC parses")
            .objects
    }

    pub(crate) fn fetched(objs: &[ObjectSpec], values: &[&str]) -> Vec<FetchedObject> {
        objs.iter()
            .zip(values)
            .map(|(o, v)| FetchedObject {
                path: o.path.clone(),
                value: SecretBytes::copy_from(v.as_bytes()),
                version: String::new(),
                refresh_at: None,
            })
            .collect()
    }

    #[test]
    fn layout_builds_sorted_tree_with_dirs() {
        let objs = objects(&[("b", None), ("a/c/d", Some(0o600)), ("a/x", None)]);
        let l = Layout::new("v", &objs).expect("layout");
        // root, a, a/c, a/c/d, a/x, b
        assert_eq!(l.len(), 6);
        let a = l.child(0, "a").expect("a");
        let c = l.child(a, "c").expect("c");
        let d = l.child(c, "d").expect("d");
        assert_eq!(
            l.node(d).map(|n| &n.kind),
            Some(&NodeKind::File { mode: 0o600 })
        );
        assert_eq!(l.object_node(1), Some(d));
        assert!(l.child(0, "nope").is_none());
        assert!(l.child(d, "x").is_none());
        assert_eq!(
            l.node(l.child(0, "b").expect("b")).map(|n| &n.kind),
            Some(&NodeKind::File { mode: 0o644 })
        );
    }

    #[test]
    fn restore_keeps_unchanged_inodes_and_skips_a_generation_for_changed_ones() {
        let objs = objects(&[("a", None), ("b", None), ("c", None)]);
        let layout = Layout::new("v", &objs).expect("layout");
        let node = |i| layout.object_node(i).expect("node");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        let prior = |i, generation, id: &str| PriorVersion {
            node: node(i),
            generation,
            id: id.into(),
            fetched_at: t,
        };
        let cache = SecretCache::new();
        let vol = cache
            .restore(
                "v",
                42,
                layout.clone(),
                Ownership::default(),
                t,
                vec![prior(0, 5, "id-a"), prior(1, 7, "id-b")],
            )
            .expect("restore");
        assert_eq!(vol.slot, 42);
        assert!(vol.snapshot().version(node(0)).is_none(), "no values yet");
        let mut values = fetched(&objs, &["A", "B2", "C"]);
        values[0].version = "id-a".into();
        values[1].version = "id-b2".into();
        let cs = vol.replace(values).expect("replace");
        let snap = vol.snapshot();
        // Same id: same generation and mtime, so the kernel's inode stays valid.
        let a = snap.version(node(0)).expect("a");
        assert_eq!((a.generation, a.fetched_at), (5, t));
        // Changed: two generations on (one may have been handed out unrecorded).
        assert_eq!(snap.version(node(1)).map(|v| v.generation), Some(9));
        // New to the volume's checkpoint: generation 1.
        assert_eq!(snap.version(node(2)).map(|v| v.generation), Some(1));
        assert_eq!(cs.changed.len(), 1);
        assert_eq!(
            (cs.changed[0].old_generation, cs.changed[0].new_generation),
            (7, 9)
        );
        // Later polls compare with the current snapshot as usual.
        let mut again = fetched(&objs, &["A", "B2", "C"]);
        again[0].version = "id-a".into();
        again[1].version = "id-b2".into();
        assert!(vol.replace(again).expect("replace").is_empty());
        // Slots are exclusive.
        assert!(
            cache
                .restore("w", 42, layout, Ownership::default(), t, vec![])
                .is_err()
        );
    }

    #[test]
    fn replace_bumps_generation_only_on_change() {
        let objs = objects(&[("a", None), ("b", None)]);
        let cache = SecretCache::new();
        let vol = cache
            .insert(
                "v1",
                Layout::new("v1", &objs).expect("layout"),
                Ownership::default(),
                fetched(&objs, &["1", "2"]),
            )
            .expect("insert");
        let a = vol.layout.object_node(0).expect("a");
        let b = vol.layout.object_node(1).expect("b");
        let before = vol.snapshot();
        assert_eq!(before.version(a).map(|v| v.generation), Some(1));

        let same = vol.replace(fetched(&objs, &["1", "2"])).expect("replace");
        assert!(same.is_empty());
        assert!(Arc::ptr_eq(&before, &vol.snapshot()), "no change, no swap");

        let cs = vol.replace(fetched(&objs, &["1", "22"])).expect("replace");
        assert_eq!(cs.changed.len(), 1);
        assert_eq!(cs.changed[0].node, b);
        assert_eq!(
            (cs.changed[0].old_generation, cs.changed[0].new_generation),
            (1, 2)
        );
        let after = vol.snapshot();
        assert_eq!(after.version(b).map(|v| v.value.expose()), Some(&b"22"[..]));
        assert_eq!(after.version(a).map(|v| v.generation), Some(1));
        // The old snapshot is untouched: an open reader keeps its version.
        assert_eq!(before.version(b).map(|v| v.value.expose()), Some(&b"2"[..]));
    }

    #[test]
    fn equal_bytes_with_a_new_version_id_keep_the_inode_and_report_the_id() {
        let objs = objects(&[("a", None)]);
        let cache = SecretCache::new();
        let vol = cache
            .insert(
                "v",
                Layout::new("v", &objs).expect("layout"),
                Ownership::default(),
                fetched(&objs, &["same"]),
            )
            .expect("insert");
        let node = vol.layout.object_node(0).expect("a");
        let mut next = fetched(&objs, &["same"]);
        next[0].version = "v2-xyz".into();
        let cs = vol.replace(next).expect("replace");
        assert!(cs.is_empty(), "equal bytes are not a change");
        let v = vol.snapshot().version(node).cloned().expect("version");
        assert_eq!((v.generation, v.id.as_str()), (1, "v2-xyz"));
    }

    #[test]
    fn slots_ids_and_removal() {
        let objs = objects(&[("a", None)]);
        let cache = SecretCache::new();
        let mk = |id: &str| {
            cache.insert(
                id,
                Layout::new(id, &objs).expect("layout"),
                Ownership::default(),
                fetched(&objs, &["x"]),
            )
        };
        let v1 = mk("one").expect("one");
        let v2 = mk("two").expect("two");
        assert_ne!(v1.slot, v2.slot);
        assert!(matches!(mk("one"), Err(CacheError::AlreadyExists(_))));
        assert!(matches!(mk("a/b"), Err(CacheError::InvalidVolumeId(_))));
        assert!(matches!(mk(".."), Err(CacheError::InvalidVolumeId(_))));
        assert_eq!(cache.by_id("two").map(|v| v.slot), Some(v2.slot));
        assert!(cache.remove("one").is_some());
        assert!(cache.by_id("one").is_none());
        assert!(cache.by_slot(v1.slot).is_none());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn generation_wraps_without_zero() {
        assert_eq!(next_generation(MAX_GENERATION), 1);
        assert_eq!(next_generation(1), 2);
    }
}
