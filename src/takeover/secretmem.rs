//! Credentials handed to a successor process in `memfd_secret(2)` memory.
//!
//! A successor must log in again to refetch values after a crash, so it needs each volume's
//! credential (the pod's service-account token) and the version key. They are not secret
//! *values*, but they unlock them, so they get the same treatment: never a file on disk, never
//! in the holder's JSON. The driver writes them into a `memfd_secret` region (Linux ≥ 5.14: the
//! pages are locked, never swapped, and removed from the kernel's direct map, so not even root
//! can read them through `/proc/<pid>/mem`) and hands the holder that fd; the holder never maps
//! it. The successor gets the fd back, maps it, copies the bytes into zeroizing buffers and
//! unmaps. When `memfd_secret` is unavailable (disabled by the kernel), nothing is handed over:
//! the successor then relies on the next NodePublishVolume (kubelet republishes every volume
//! periodically with `requiresRepublish`) or on TokenRequest.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use zeroize::Zeroizing;

/// Bytes before the payload: its length, little-endian.
const HEADER: usize = 8;

/// Creates a `memfd_secret` region holding `payload`.
pub fn seal(payload: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: memfd_secret takes one flags argument and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC as libc::c_ulong) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = i32::try_from(raw).map_err(|_| io::Error::other("memfd_secret: fd out of range"))?;
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = HEADER + payload.len();
    let size = i64::try_from(len).map_err(|_| io::Error::other("payload too large"))?;
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let map = Mapping::new(&fd, len, libc::PROT_READ | libc::PROT_WRITE)?;
    // SAFETY: the mapping is `len` bytes, writable, and only this thread uses it.
    unsafe {
        let dst = map.ptr.cast::<u8>();
        std::ptr::copy_nonoverlapping((payload.len() as u64).to_le_bytes().as_ptr(), dst, HEADER);
        std::ptr::copy_nonoverlapping(payload.as_ptr(), dst.add(HEADER), payload.len());
    }
    Ok(fd)
}

/// Reads the payload of a region made by `seal`.
pub fn open(fd: &OwnedFd) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of one `stat`.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so `st` is initialized.
    let size = usize::try_from(unsafe { st.assume_init() }.st_size)
        .map_err(|_| io::Error::other("negative size"))?;
    if size < HEADER {
        return Err(io::Error::other("credential region too small"));
    }
    let map = Mapping::new(fd, size, libc::PROT_READ)?;
    let mut len_bytes = [0u8; HEADER];
    // SAFETY: the mapping is `size` ≥ HEADER bytes and readable.
    unsafe { std::ptr::copy_nonoverlapping(map.ptr.cast::<u8>(), len_bytes.as_mut_ptr(), HEADER) };
    let len = usize::try_from(u64::from_le_bytes(len_bytes))
        .map_err(|_| io::Error::other("bad length"))?;
    if len > size - HEADER {
        return Err(io::Error::other("credential region truncated"));
    }
    let mut out = Zeroizing::new(vec![0u8; len]);
    // SAFETY: `HEADER + len` ≤ `size` bytes are mapped and readable; `out` has `len` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(map.ptr.cast::<u8>().add(HEADER), out.as_mut_ptr(), len);
    }
    Ok(out)
}

/// A shared mapping of a whole region, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(fd: &OwnedFd, len: usize, prot: libc::c_int) -> io::Result<Self> {
        // SAFETY: a new shared mapping of `len` bytes of `fd`; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing references it after this.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_or_clear_unavailability() {
        match seal(b"token-a\ttoken-b") {
            Ok(fd) => {
                let back = open(&fd).expect("open");
                assert_eq!(&back[..], b"token-a\ttoken-b");
            }
            // Kernels without secretmem: the caller falls back; nothing to test here.
            Err(e) => assert!(
                matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)),
                "{e}"
            ),
        }
    }
}
