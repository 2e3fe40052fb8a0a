//! Real-kernel FUSE integration tests for `baofs mount`.
//!
//! They run the real binary against a real OpenBao dev server and the real kernel FUSE driver.
//! Run them with `sudo scripts/test.sh` (or `scripts/test.sh` as root): it installs and starts
//! OpenBao and exports `BAOFS_TEST_BAO_ADDR` / `BAOFS_TEST_BAO_TOKEN`. Without those the tests
//! fail; `BAOFS_SKIP_FUSE=1` skips them explicitly. Each test uses its own secret paths, target
//! and state dir, so they run in parallel against one server.

#![allow(clippy::unwrap_used)]

mod dynamic;
mod errors;
mod harness;
mod holder;
mod jwt;
mod kv;
mod layout;
mod namespace;
mod raw;
mod readonly;
mod renewal;
mod rotation;
mod sharing;
mod signals;
mod tls;
