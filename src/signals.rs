//! Stopping a [`gfprotocol::Server`] on SIGINT or SIGTERM.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use gfprotocol::ShutdownHandle;

/// How often the watcher thread looks at the signal flag.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Registers SIGINT and SIGTERM handlers and starts a thread that calls
/// [`ShutdownHandle::shutdown`] when one arrives. A second signal after that kills the process
/// with the default action.
pub fn shutdown_on_signals(handle: ShutdownHandle) -> io::Result<()> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The second signal exits at once (conditional default), the first sets the flag.
        signal_hook::flag::register_conditional_default(signal, Arc::clone(&flag))?;
        signal_hook::flag::register(signal, Arc::clone(&flag))?;
    }
    thread::Builder::new()
        .name("gf-signals".into())
        .spawn(move || {
            while !flag.load(Ordering::SeqCst) && !handle.is_shutdown() {
                thread::sleep(SIGNAL_POLL);
            }
            tracing::info!("shutting down");
            handle.shutdown();
        })?;
    Ok(())
}

/// A flag that SIGTERM or SIGINT sets, for a process that drains on its own schedule.
pub fn stop_flag() -> io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&flag))?;
    }
    Ok(flag)
}
