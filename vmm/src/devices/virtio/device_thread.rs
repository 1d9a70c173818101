//! A device's own thread, for devices that poll their queues and host fds
//! themselves: started at activation, told to stop through an eventfd, and
//! joined when the device is dropped.

use std::io;
use std::thread::JoinHandle;
use vmm_sys_util::eventfd::EventFd;

/// A running device thread; stopped and joined on drop.
pub struct DeviceThread {
    name: &'static str,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl DeviceThread {
    /// Runs `serve` on a thread called `name`. `serve` gets the eventfd that
    /// is signalled when the thread must end, and returns then.
    pub fn spawn<F>(name: &'static str, serve: F) -> io::Result<Self>
    where
        F: FnOnce(&EventFd) -> io::Result<()> + Send + 'static,
    {
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let thread_stop = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if let Err(err) = serve(&thread_stop) {
                    eprintln!("runv-vmm: {name} stopped: {err}");
                }
            })?;
        Ok(Self {
            name,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if let Err(err) = self.stop.write(1) {
            eprintln!("runv-vmm: cannot stop the {} thread: {err}", self.name);
            return;
        }
        if thread.join().is_err() {
            eprintln!("runv-vmm: the {} thread panicked", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_thread_runs_until_dropped() {
        let ended = Arc::new(AtomicBool::new(false));
        let seen = ended.clone();
        let thread = DeviceThread::spawn("test-device", move |stop| {
            // Blocks until the drop signals the eventfd.
            let epoll = vmm_sys_util::epoll::Epoll::new()?;
            epoll.ctl(
                vmm_sys_util::epoll::ControlOperation::Add,
                std::os::fd::AsRawFd::as_raw_fd(stop),
                vmm_sys_util::epoll::EpollEvent::new(vmm_sys_util::epoll::EventSet::IN, 0),
            )?;
            let mut events = [vmm_sys_util::epoll::EpollEvent::default()];
            epoll.wait(-1, &mut events)?;
            seen.store(true, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert!(!ended.load(Ordering::SeqCst));
        drop(thread);
        assert!(ended.load(Ordering::SeqCst));
    }
}
