//! `--init`: a tiny init as pid 1 in front of the command, as tini or catatonit in
//! podman. The kernel gives pid 1 no default signal actions, so a command that
//! installs no handler could not be stopped by SIGTERM; and orphans are re-parented
//! to pid 1, which must reap them. This init forwards every signal it can catch to
//! the command, reaps every child, and exits with the command's status.

use std::ffi::CString;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use super::process::{default_signals, exec, fail};
use super::{EXIT_RUNTIME, exit_code_of};

pub fn run(argv: &[CString], env: &[CString], path: String) -> ! {
    let all = SigSet::all();
    if let Err(e) = all.thread_block() {
        fail(EXIT_RUNTIME, &format!("init: block signals: {}", e.desc()));
    }
    // SAFETY: this process is single-threaded (forked from strata before any thread
    // started), so the child is a complete copy.
    match unsafe { nix::unistd::fork() } {
        Err(e) => fail(EXIT_RUNTIME, &format!("init: fork: {}", e.desc())),
        Ok(ForkResult::Child) => {
            if let Err(e) = default_signals() {
                fail(
                    EXIT_RUNTIME,
                    &format!("reset the signal handling: {}", e.desc()),
                );
            }
            let (code, message) = exec(argv, env, path);
            fail(code, &message)
        }
        Ok(ForkResult::Parent { child }) => loop {
            match all.wait() {
                Ok(Signal::SIGCHLD) => reap(child),
                Ok(signal) => {
                    let _ = nix::sys::signal::kill(child, signal);
                }
                Err(_) => {}
            }
        },
    }
}

/// Reaps every child that has ended; exits when the command has.
fn reap(command: Pid) {
    loop {
        match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) if status.pid() == Some(command) => {
                if let Some(code) = exit_code_of(status) {
                    std::process::exit(code)
                }
            }
            Ok(_) => {}
        }
    }
}
