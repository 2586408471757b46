//! `-t`: the container's standard streams are a pseudo-terminal whose other end
//! strata copies to and from its own, with the caller's terminal in raw mode (so
//! keys reach the container as typed) and its window size passed on.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::thread::JoinHandle;

use nix::sys::termios::{self, SetArg, Termios};

pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

impl Pty {
    /// A new pty with the caller's window size when its stdout is a terminal.
    pub fn open() -> nix::Result<Pty> {
        let size = window_size(io::stdout().as_fd());
        let pty = nix::pty::openpty(size.as_ref(), None)?;
        nix::fcntl::fcntl(
            &pty.master,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
        Ok(Pty {
            master: pty.master,
            slave: pty.slave,
        })
    }
}

fn window_size(fd: impl AsFd) -> Option<nix::pty::Winsize> {
    let mut size = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one struct winsize into `size`, which we own.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (rc == 0).then_some(size)
}

/// Passes the caller's window size on to the container's terminal (after SIGWINCH);
/// the kernel then signals the container's foreground process group.
pub fn copy_window_size(master: &OwnedFd) {
    if let Some(size) = window_size(io::stdout().as_fd()) {
        // SAFETY: TIOCSWINSZ reads one struct winsize from `size`.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    }
}

/// The caller's terminal in raw mode until dropped.
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    pub fn enter() -> RawMode {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok();
        if let Some(saved) = &saved {
            let mut raw = saved.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        }
        RawMode { saved }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSADRAIN, saved);
        }
    }
}

/// Copies the container's output to our stdout until every process holding the
/// terminal's other end is gone (the read then fails with EIO).
pub fn copy_output(master: &OwnedFd) -> io::Result<JoinHandle<()>> {
    let mut from = File::from(master.try_clone()?);
    std::thread::Builder::new()
        .name("strata-pty-out".into())
        .spawn(move || {
            let mut buf = [0u8; 16384];
            let mut out = io::stdout().lock();
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
        })
}

/// Copies our stdin into the container's terminal, for `-i`. Not joined: it may sit
/// in a read of our stdin when the container ends.
pub fn copy_input(master: &OwnedFd) -> io::Result<()> {
    let mut to = File::from(master.try_clone()?);
    std::thread::Builder::new()
        .name("strata-pty-in".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            let mut input = io::stdin().lock();
            while let Ok(n) = input.read(&mut buf) {
                if n == 0 {
                    // End of our input: pass it on as the terminal's end-of-file.
                    let _ = to.write_all(&[4]);
                    break;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        })?;
    Ok(())
}
