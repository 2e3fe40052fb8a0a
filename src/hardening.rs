//! Process hardening for a process that holds secrets.
//!
//! - `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`: secret buffers are never swapped out.
//!   `MCL_ONFAULT` locks pages only when touched, so the FUSE loops' large read buffers and idle
//!   thread stacks do not count against the memory limit.
//! - `PR_SET_DUMPABLE 0`: no core dumps, no same-uid ptrace or /proc/<pid>/mem reads.
//! - `RLIMIT_CORE 0`: belt and braces for core dumps.
#![allow(unsafe_code)]

/// What could not be applied (each is a warning: e.g. no CAP_IPC_LOCK in a dev shell).
pub fn harden_process() -> Vec<String> {
    let mut warnings = Vec::new();
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        warnings.push(format!(
            "prctl(PR_SET_DUMPABLE, 0) failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid rlimit that outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        warnings.push(format!(
            "setrlimit(RLIMIT_CORE, 0) failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: mlockall takes flags only.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } != 0 {
        warnings.push(format!(
            "mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT) failed: {} (secrets may be swapped; \
             grant CAP_IPC_LOCK or raise RLIMIT_MEMLOCK)",
            std::io::Error::last_os_error()
        ));
    }
    warnings
}
