//! baofs: OpenBao secrets as a live, read-only FUSE filesystem, and the CSI node driver that
//! mounts it into pods (drop-in for Secrets Store CSI Driver + the OpenBao provider).
//!
//! ```text
//! kubelet ─CSI─> csi server ─> volume spec (SPC + pod + token) ─> provider (OpenBao) ─> cache
//! pod read ─> kernel ─> fuse adapter ─> fs logic ─> cache            (never the network)
//! poller ─> provider ─> cache swap ─> kernel invalidation ─> Secret sync / pod status / events
//! ```
//!
//! One module per stage: `volume` (spec), `provider` (OpenBao over HTTP), `cache` (values,
//! atomic swaps), `fs` (filesystem logic, no FUSE), `fuse` (the hub's own FUSE request loop,
//! mounts, invalidation), `poller` (rotation), `publisher` (publish/unpublish use cases),
//! `takeover` (checkpoints to `holder`, taking a hub over after a restart). `app`
//! composes `baofs mount`; `csi_app` composes `baofs csi` from `csi_server` (the gRPC edge:
//! socket, Identity/Node services, the one error-to-code mapping) and `spc_source` (where a
//! volume's SecretProviderClass comes from); `k8s` is the Kubernetes side (SPCs from the API,
//! pod status, events, the observer), `syncer` writes synced Secrets, `metrics` serves
//! Prometheus metrics; `cli` and `main` are the edge.
//!
//! Rules: reqwest stays in `provider::openbao`, fuser in `fuse` (fs uses its value types only),
//! tonic in `csi_server` (generated code in the `baofs-csi` crate), kube and k8s-openapi in
//! `k8s`, `syncer` and `csi_app`;
//! secret bytes live only in `secret::SecretBytes`; the read path never waits on the network and
//! takes no lock the poller holds.

pub mod app;
pub mod cache;
pub mod cli;
pub mod csi_app;
pub mod csi_server;
pub mod fs;
pub mod fuse;
pub mod hardening;
pub mod holder;
pub mod k8s;
pub mod metrics;
pub mod observer;
pub mod poller;
pub mod provider;
pub mod publisher;
pub mod secret;
pub mod spc;
pub mod spc_source;
pub mod status;
pub mod syncer;
pub mod takeover;
pub mod telemetry;
pub mod timefmt;
pub mod volume;
