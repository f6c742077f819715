//! Sleeping when there is nothing to poll: an eventfd waker and a bounded
//! `poll(2)` on a set of descriptors.
//!
//! Reactors spin while I/O is in flight (the emulated card only makes
//! progress when polled) and sleep here only once they have been idle for a
//! while, so an idle service costs no CPU.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// An eventfd that wakes a sleeping reactor or listener.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// A new non-blocking eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a negative return is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Makes the next (or current) [`wait_readable`] on this waker return.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. A full
        // counter (EAGAIN) already means "woken", so the result is ignored.
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// Clears pending wake-ups.
    pub fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking eventfd.
        unsafe {
            libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8);
        }
    }

    /// The descriptor, for [`wait_readable`].
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Waits until one of `fds` is readable (or hung up), or `timeout` passes.
/// Returns how many are ready; an interrupted wait returns 0.
pub fn wait_readable(fds: &[RawFd], timeout: Duration) -> io::Result<usize> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfds` is a live, correctly sized array of pollfd for the
    // duration of the call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn waker_wakes_and_clears() {
        let w = Waker::new().unwrap();
        let t = Instant::now();
        assert_eq!(wait_readable(&[w.raw_fd()], Duration::from_millis(20)).unwrap(), 0);
        assert!(t.elapsed() >= Duration::from_millis(15));
        w.wake();
        w.wake();
        assert_eq!(wait_readable(&[w.raw_fd()], Duration::from_secs(5)).unwrap(), 1);
        w.clear();
        assert_eq!(wait_readable(&[w.raw_fd()], Duration::from_millis(1)).unwrap(), 0);
    }
}
