//! The caller's side of a running container: strata's own process stays outside
//! every namespace, forwards the signals it gets to the container's first process,
//! kills it `--stop-timeout` after a SIGTERM or SIGINT it has not obeyed, copies a
//! pty, and returns the exit code.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::WaitPidFlag;
use nix::unistd::Pid;

use super::exit_code_of;

/// Signals strata passes on, as podman's --sig-proxy; SIGCHLD tells it the child
/// ended. They are blocked in every thread before the fork and read from a
/// signalfd.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCONT,
        Signal::SIGALRM,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

pub struct Supervisor<'a> {
    pub child: Pid,
    /// Where the child writes the container's pid (4 bytes, native order), and
    /// later, if it leaves the removal of the container to the caller, the exit
    /// code of the container's process once that has ended (4 bytes).
    pub from_child: Option<OwnedFd>,
    /// Called once on that second message, while the child is still ending.
    pub on_end: Option<&'a mut dyn FnMut()>,
    /// The process signals go to, when known from the start.
    pub target: Option<Pid>,
    pub stop_timeout: Duration,
    pub pty_master: Option<Arc<OnceLock<OwnedFd>>>,
}

impl Supervisor<'_> {
    /// Waits for the child, forwarding signals meanwhile; its exit code.
    pub fn wait(mut self) -> std::io::Result<i32> {
        let signals = SignalFd::with_flags(&handled_signals(), SfdFlags::SFD_CLOEXEC)?;
        let mut from_child = self.from_child.take().map(std::fs::File::from);
        let mut container: Option<Pid> = self.target;
        let mut deadline: Option<Instant> = None;
        loop {
            if let Some(code) = self.reap()? {
                return Ok(code);
            }
            let timeout = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    PollTimeout::try_from(left.as_millis().min(60_000) as i32)
                        .unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            if let Some(f) = &from_child {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
            }
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let pid_ready = fds
                .get(1)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty());
            let signal_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
            if pid_ready && let Some(f) = from_child.as_mut() {
                let mut buf = [0u8; 4];
                match f.read_exact(&mut buf) {
                    Ok(()) if container.is_none() => {
                        container = Some(Pid::from_raw(i32::from_ne_bytes(buf)));
                    }
                    Ok(()) => {
                        from_child = None;
                        if let Some(on_end) = self.on_end.as_mut() {
                            on_end();
                        }
                    }
                    // The child has ended, or says no more.
                    Err(_) => from_child = None,
                }
            }
            if signal_ready && let Ok(Some(info)) = signals.read_signal() {
                self.on_signal(info.ssi_signo as i32, container, &mut deadline);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.kill(container);
                deadline = None;
            }
        }
    }

    fn on_signal(&self, signo: i32, container: Option<Pid>, deadline: &mut Option<Instant>) {
        let Ok(signal) = Signal::try_from(signo) else {
            return;
        };
        match signal {
            Signal::SIGCHLD => {}
            Signal::SIGWINCH => {
                if let Some(master) = self.pty_master.as_ref().and_then(|m| m.get()) {
                    super::pty::copy_window_size(master);
                }
            }
            _ => {
                match container {
                    Some(pid) => {
                        let _ = nix::sys::signal::kill(pid, signal);
                    }
                    // Not started yet: nothing to stop gracefully.
                    None => self.kill(None),
                }
                if matches!(signal, Signal::SIGTERM | Signal::SIGINT) && deadline.is_none() {
                    *deadline = Some(Instant::now() + self.stop_timeout);
                }
            }
        }
    }

    /// SIGKILL to the container's pid 1 ends its whole pid namespace; before it
    /// exists, the child's death takes everything with it.
    fn kill(&self, container: Option<Pid>) {
        let target = container.unwrap_or(self.child);
        let _ = nix::sys::signal::kill(target, Signal::SIGKILL);
    }

    fn reap(&self) -> std::io::Result<Option<i32>> {
        match nix::sys::wait::waitpid(self.child, Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => Ok(exit_code_of(status)),
            Err(nix::errno::Errno::EINTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
