//! `-t`: the container's standard streams are a pseudo-terminal whose other end
//! strata copies to and from its own, with the caller's terminal in raw mode (so
//! keys reach the container as typed) and its window size passed on.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use nix::fcntl::OFlag;

use super::RunError;
use nix::sys::socket;
use nix::sys::termios::{self, SetArg, Termios};

/// The socket pair the container's first process sends its terminal's master end
/// through: the terminal is opened in the container's own devpts, so that `tty`
/// and ttyname() find it there as /dev/pts/0 (a pty of the host's devpts would
/// have no name inside).
pub struct ConsoleSocket {
    pub parent: OwnedFd,
    pub child: OwnedFd,
}

impl ConsoleSocket {
    /// With `-t`: (the container's end, strata's end); else neither.
    pub fn pair_for(tty: bool) -> Result<(Option<OwnedFd>, Option<OwnedFd>), RunError> {
        if !tty {
            return Ok((None, None));
        }
        let pair = ConsoleSocket::new().map_err(RunError::start("open a socket pair"))?;
        Ok((Some(pair.child), Some(pair.parent)))
    }

    pub fn new() -> nix::Result<ConsoleSocket> {
        let (parent, child) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::Stream,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )?;
        Ok(ConsoleSocket { parent, child })
    }
}

/// In the container, after pivot_root: a new terminal of its devpts, owned by the
/// user the command runs as; sends the master end to strata and returns the slave.
pub fn make_console(socket: &OwnedFd, uid: u32, gid: u32) -> Result<OwnedFd, String> {
    let fail = |what: &'static str| move |e: nix::errno::Errno| format!("{what}: {}", e.desc());
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(fail("open /dev/ptmx"))?;
    nix::pty::grantpt(&master).map_err(fail("grantpt"))?;
    nix::pty::unlockpt(&master).map_err(fail("unlockpt"))?;
    let name = nix::pty::ptsname_r(&master).map_err(fail("ptsname"))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(fail("open the terminal"))?;
    nix::unistd::fchown(&slave, Some(uid.into()), Some(gid.into()))
        .map_err(fail("give the terminal to the user"))?;
    let fds = [master.as_raw_fd()];
    socket::sendmsg::<()>(
        socket.as_raw_fd(),
        &[io::IoSlice::new(b"t")],
        &[socket::ControlMessage::ScmRights(&fds)],
        socket::MsgFlags::empty(),
        None,
    )
    .map_err(fail("send the terminal to strata"))?;
    Ok(slave)
}

/// Strata's side: the master end, once the container sends it; None when the
/// container ended before it did.
pub fn receive_console(socket: &OwnedFd) -> Option<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = socket::recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    for cmsg in msg.cmsgs().ok()? {
        if let socket::ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel has just installed this descriptor for us.
            return Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    None
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

/// Passes the caller's window size on to the container's terminal (at the start and
/// after SIGWINCH);
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

/// The caller's side of `-t`: its terminal in raw mode (with `-i`) and the thread
/// that copies. Nothing without `-t`.
pub struct Attached {
    terminal: Option<Terminal>,
    _raw: Option<RawMode>,
}

impl Attached {
    pub fn new(console: Option<OwnedFd>, interactive: bool) -> Result<Attached, RunError> {
        // Raw mode only when our own stdin is a terminal that feeds the container's.
        let raw = (console.is_some() && interactive).then(RawMode::enter);
        let terminal = console
            .map(|socket| Terminal::attach(socket, interactive))
            .transpose()
            .map_err(|source| RunError::Start {
                op: "attach the terminal",
                source,
            })?;
        Ok(Attached {
            terminal,
            _raw: raw,
        })
    }

    /// The master end, once the container sent it: SIGWINCH needs it.
    pub fn master(&self) -> Option<Arc<OnceLock<OwnedFd>>> {
        self.terminal.as_ref().map(|t| Arc::clone(&t.master))
    }

    /// Waits until the output has been copied to the end; then the caller's
    /// terminal mode comes back.
    pub fn finish(mut self) {
        if let Some(terminal) = self.terminal.take() {
            terminal.finish();
        }
    }
}

/// Strata's end of the container's terminal: a thread waits for the master end,
/// passes the window size on, starts copying stdin in (`-i`) and copies the output
/// out until the container is gone.
pub struct Terminal {
    /// Set once the container has sent it; SIGWINCH needs it.
    pub master: Arc<OnceLock<OwnedFd>>,
    thread: JoinHandle<()>,
}

impl Terminal {
    pub fn attach(socket: OwnedFd, input: bool) -> io::Result<Terminal> {
        let master = Arc::new(OnceLock::new());
        let shared = Arc::clone(&master);
        let thread = std::thread::Builder::new()
            .name("strata-pty".into())
            .spawn(move || {
                let Some(fd) = receive_console(&socket) else {
                    return;
                };
                copy_window_size(&fd);
                let fd = shared.get_or_init(|| fd);
                if input {
                    let _ = copy_input(fd);
                }
                copy_output(fd);
            })?;
        Ok(Terminal { master, thread })
    }

    /// Waits until the output has been copied to the end.
    pub fn finish(self) {
        let _ = self.thread.join();
    }
}

/// Copies the container's output to our stdout until every process holding the
/// terminal's other end is gone (the read then fails with EIO).
fn copy_output(master: &OwnedFd) {
    let Ok(dup) = master.try_clone() else { return };
    let mut from = File::from(dup);
    let mut buf = [0u8; 16384];
    let mut out = io::stdout().lock();
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
            break;
        }
    }
}

/// Copies our stdin into the container's terminal, for `-i`. Not joined: it may sit
/// in a read of our stdin when the container ends.
fn copy_input(master: &OwnedFd) -> io::Result<()> {
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
