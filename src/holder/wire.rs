//! The holder's wire: one JSON line per direction on a Unix stream socket, with at most one fd
//! riding on it as SCM_RIGHTS, and the peer's credentials (SO_PEERCRED). The only unsafe code
//! of the holder lives here.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Longest line either side accepts. The metadata can be a whole checkpoint (about 1 MB for
/// 1000 volumes); this bounds what a hostile peer can make us buffer.
pub const MAX_LINE: usize = 64 * 1024 * 1024;

/// Bytes read per `recvmsg`.
const CHUNK: usize = 64 * 1024;

/// Room for the control message of up to 4 fds (we use 1; extra ones a peer sends are closed).
const CMSG_SPACE: usize = 64;

/// Sends `line` (which must end with `\n`) and, if given, `fd` as SCM_RIGHTS on the first byte.
pub fn send_line(sock: BorrowedFd<'_>, line: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut sent = 0;
    while sent < line.len() {
        let rest = &line[sent..];
        let mut iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        let mut cmsg_buf = [0u64; CMSG_SPACE / 8];
        // SAFETY: an all-zero msghdr is a valid empty message.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let (Some(fd), 0) = (fd, sent) {
            let raw: RawFd = fd.as_raw_fd();
            // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
            let (space, len) = unsafe {
                (
                    libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize,
                    libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize,
                )
            };
            msg.msg_control = cmsg_buf.as_mut_ptr().cast();
            msg.msg_controllen = space;
            // SAFETY: `msg_control` points at `cmsg_buf` (8-byte aligned, CMSG_SPACE bytes
            // large, more than `space`), so CMSG_FIRSTHDR returns a valid, writable header and
            // CMSG_DATA points at `size_of::<RawFd>()` writable bytes inside the buffer.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = len;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), raw);
            }
        }
        // SAFETY: `msg` points at `iov` (valid for `rest.len()` bytes) and, if set, at
        // `cmsg_buf`; all outlive the call. `sock` and the fd are live for the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}

/// Reads up to and including the first `\n` (the peer sends nothing after it), collecting
/// fds that arrive as SCM_RIGHTS (received close-on-exec). Returns the line without `\n`.
pub fn recv_line(sock: BorrowedFd<'_>) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    // On the heap: 64 KiB is a lot for a small thread stack.
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cmsg_buf = [0u64; CMSG_SPACE / 8];
        // SAFETY: an all-zero msghdr is a valid empty message.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_SPACE;
        // SAFETY: `msg` points at `iov` (valid for writes of `buf.len()` bytes) and at
        // `cmsg_buf` (CMSG_SPACE bytes); both outlive the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: the kernel filled `msg_control`/`msg_controllen`; CMSG_FIRSTHDR/NXTHDR walk
        // only within them, and each SCM_RIGHTS payload holds `(len - CMSG_LEN(0)) / 4` fds
        // that are now ours to own (read unaligned).
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let payload = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let data = libc::CMSG_DATA(c).cast::<RawFd>();
                    for i in 0..payload / size_of::<RawFd>() {
                        let raw = std::ptr::read_unaligned(data.add(i));
                        fds.push(OwnedFd::from_raw_fd(raw));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "control message truncated (too many fds sent)",
            ));
        }
        let n = n as usize;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a full line",
            ));
        }
        let chunk = &buf[..n];
        let end = chunk.iter().position(|&b| b == b'\n');
        let part = &chunk[..end.unwrap_or(n)];
        if line.len() + part.len() > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line longer than {MAX_LINE} bytes"),
            ));
        }
        line.extend_from_slice(part);
        if end.is_some() {
            return Ok((line, fds));
        }
    }
}

/// The uid of the process at the other end of a connected Unix socket (SO_PEERCRED: the
/// credentials it had when it called `connect`).
pub fn peer_uid(sock: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: an all-zero ucred is a valid value.
    let mut cred: libc::ucred = unsafe { zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is valid for writes of `len` bytes and `len` is a valid in/out pointer;
    // both outlive the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// This process's effective uid.
pub fn own_uid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
