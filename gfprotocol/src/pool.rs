//! The worker pool behind the front door: a bounded queue of jobs and workers that grow on
//! demand.
//!
//! `min` workers always run. When a job is queued and no worker is idle, another worker is
//! started, up to `max`; a worker beyond `min` exits after `idle_exit` without work. A worker
//! writing a response to a slow reader blocks in a write (each write bounded by the send
//! timeout), so a fixed pool would let as many slow readers as workers stop the server; a
//! growing pool (as Varnish's `thread_pool_max`) keeps serving the others, and its bound keeps
//! memory bounded. A worker that cannot be started (EAGAIN: the thread or memory limit) is
//! logged, rate-limited, and the job waits for a running worker.
//!
//! Accounting: `idle` counts the workers waiting for a job that no submit has claimed yet, and
//! `claimed` the wake-ups handed to waiting workers that no worker has taken yet, so that a
//! burst of submits before any waiter runs still starts the workers it needs. Their sum is the
//! number of workers inside the wait.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// After a worker failed to start, no other start is tried for this long.
const SPAWN_RETRY: Duration = Duration::from_millis(100);
/// At most one warning about workers that failed to start per this interval.
const SPAWN_WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of a pool.
pub(crate) struct PoolConfig {
    /// Workers that always run.
    pub(crate) min: usize,
    /// Workers at most.
    pub(crate) max: usize,
    /// Jobs queued at most.
    pub(crate) depth: usize,
    /// A worker beyond `min` exits after this long without a job.
    pub(crate) idle_exit: Duration,
    /// Thread names are `<name>-<n>`.
    pub(crate) name: &'static str,
    /// Run once on each worker thread before its first job.
    pub(crate) on_start: fn(),
}

type RunJob<J> = Box<dyn Fn(J) + Send + Sync>;

/// Who takes a job just queued.
enum Assigned {
    /// An idle worker, to be woken.
    Wake,
    /// A new worker with this index, to be started.
    Start(usize),
    /// The next busy worker to finish.
    Wait,
}

struct State<J> {
    queue: VecDeque<J>,
    idle: usize,
    claimed: usize,
    workers: usize,
    closed: bool,
    /// A submitter blocks until the queue has room (only at shutdown).
    room_wanted: bool,
    started: usize,
    spawn_retry_at: Option<Instant>,
    spawn_failures: u64,
    spawn_warned_at: Option<Instant>,
}

struct Inner<J> {
    state: Mutex<State<J>>,
    work: Condvar,
    room: Condvar,
    exited: Condvar,
    config: PoolConfig,
    run: RunJob<J>,
}

impl<J> Inner<J> {
    fn lock(&self) -> MutexGuard<'_, State<J>> {
        // Nothing panics while holding the lock; should it, the counts are still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A pool running `run` on each submitted job.
pub(crate) struct Pool<J> {
    inner: Arc<Inner<J>>,
}

impl<J: Send + 'static> Pool<J> {
    /// Starts the `min` workers; fails when one cannot be started.
    pub(crate) fn start(
        config: PoolConfig,
        run: impl Fn(J) + Send + Sync + 'static,
    ) -> io::Result<Pool<J>> {
        let min = config.min;
        let pool = Pool {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    queue: VecDeque::with_capacity(config.depth),
                    idle: 0,
                    claimed: 0,
                    workers: 0,
                    closed: false,
                    room_wanted: false,
                    started: 0,
                    spawn_retry_at: None,
                    spawn_failures: 0,
                    spawn_warned_at: None,
                }),
                work: Condvar::new(),
                room: Condvar::new(),
                exited: Condvar::new(),
                config,
                run: Box::new(run),
            }),
        };
        for _ in 0..min {
            let index = {
                let mut state = pool.inner.lock();
                state.workers += 1;
                state.started += 1;
                state.started
            };
            if let Err(error) = pool.spawn(index) {
                pool.inner.lock().workers -= 1;
                pool.close_and_wait();
                return Err(error);
            }
        }
        Ok(pool)
    }

    /// Queues `job`, starting a worker when none is idle; gives it back when the queue is full.
    pub(crate) fn try_submit(&self, job: J) -> Result<(), J> {
        let mut state = self.inner.lock();
        if state.closed || state.queue.len() >= self.inner.config.depth {
            return Err(job);
        }
        state.queue.push_back(job);
        let assigned = self.assign(&mut state);
        drop(state);
        self.carry_out(assigned);
        Ok(())
    }

    /// Queues `job`, waiting for room (at shutdown, for the requests still in the front door).
    pub(crate) fn submit_waiting(&self, job: J) {
        let mut state = self.inner.lock();
        while state.queue.len() >= self.inner.config.depth && state.workers > 0 {
            state.room_wanted = true;
            state = self
                .inner
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.queue.push_back(job);
        let assigned = self.assign(&mut state);
        drop(state);
        self.carry_out(assigned);
    }

    /// Workers running now.
    #[cfg(test)]
    pub(crate) fn workers(&self) -> usize {
        self.inner.lock().workers
    }

    /// Lets the workers finish every queued job, then waits until all have exited.
    pub(crate) fn close_and_wait(&self) {
        let mut state = self.inner.lock();
        state.closed = true;
        self.inner.work.notify_all();
        while state.workers > 0 {
            state = self
                .inner
                .exited
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Decides who takes the job just queued: an idle worker (claimed here), a new worker
    /// (its place reserved here), or, with neither, the next busy worker to finish.
    fn assign(&self, state: &mut State<J>) -> Assigned {
        if state.idle > 0 {
            state.idle -= 1;
            state.claimed += 1;
            return Assigned::Wake;
        }
        let may_start = state.spawn_retry_at.is_none_or(|at| Instant::now() >= at);
        if state.workers < self.inner.config.max && may_start {
            state.workers += 1;
            state.started += 1;
            return Assigned::Start(state.started);
        }
        Assigned::Wait
    }

    /// Acts on `assign`'s decision once the lock is released: a worker woken while the
    /// submitter still holds the lock would only block on it again (a second sleep and wake-up
    /// per job, the pool's largest cost under load).
    fn carry_out(&self, assigned: Assigned) {
        match assigned {
            Assigned::Wake => self.inner.work.notify_one(),
            Assigned::Start(index) => self.spawn_or_give_up(index),
            Assigned::Wait => {}
        }
    }

    fn spawn(&self, index: usize) -> io::Result<()> {
        let inner = Arc::clone(&self.inner);
        thread::Builder::new()
            .name(format!("{}-{index}", self.inner.config.name))
            .spawn(move || work(&inner))
            .map(drop)
    }

    fn spawn_or_give_up(&self, index: usize) {
        let Err(error) = self.spawn(index) else {
            return;
        };
        let mut state = self.inner.lock();
        state.workers -= 1;
        state.spawn_retry_at = Some(Instant::now() + SPAWN_RETRY);
        state.spawn_failures += 1;
        let warn = state
            .spawn_warned_at
            .is_none_or(|at| at.elapsed() >= SPAWN_WARN_INTERVAL);
        if warn {
            tracing::warn!(
                %error,
                workers = state.workers,
                failures = state.spawn_failures,
                "cannot start another worker; the request waits for a busy one"
            );
            state.spawn_warned_at = Some(Instant::now());
            state.spawn_failures = 0;
        }
        self.inner.exited.notify_all();
    }
}

/// Takes the worker out of the count if its thread unwinds (a job does not panic: the server
/// catches handler panics; this is the last line).
struct Leaving<'a, J> {
    inner: &'a Inner<J>,
    counted: bool,
}

impl<J> Drop for Leaving<'_, J> {
    fn drop(&mut self) {
        if !self.counted {
            let mut state = self.inner.lock();
            leave(self.inner, &mut state);
        }
    }
}

fn leave<J>(inner: &Inner<J>, state: &mut State<J>) {
    state.workers -= 1;
    inner.exited.notify_all();
    // A submitter waiting for room must not wait on a pool without workers.
    inner.room.notify_all();
}

fn work<J>(inner: &Inner<J>) {
    (inner.config.on_start)();
    let mut leaving = Leaving {
        inner,
        counted: false,
    };
    let mut state = inner.lock();
    loop {
        if let Some(job) = state.queue.pop_front() {
            if state.room_wanted {
                state.room_wanted = false;
                inner.room.notify_all();
            }
            drop(state);
            (inner.run)(job);
            state = inner.lock();
            continue;
        }
        if state.closed {
            break;
        }
        state.idle += 1;
        let (woken, wait) = inner
            .work
            .wait_timeout(state, inner.config.idle_exit)
            .unwrap_or_else(PoisonError::into_inner);
        state = woken;
        if state.claimed > 0 {
            state.claimed -= 1;
        } else {
            state.idle -= 1;
        }
        let surplus = state.workers > inner.config.min;
        if wait.timed_out() && surplus && state.queue.is_empty() && !state.closed {
            break;
        }
    }
    leave(inner, &mut state);
    leaving.counted = true;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn config(min: usize, max: usize, idle_exit: Duration) -> PoolConfig {
        PoolConfig {
            min,
            max,
            depth: 64,
            idle_exit,
            name: "test-worker",
            on_start: || {},
        }
    }

    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn blocked_jobs_start_workers_up_to_the_bound_and_the_extra_ones_leave() {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let (done_tx, done_rx) = mpsc::channel::<usize>();
        let pool = Pool::start(
            config(2, 6, Duration::from_millis(50)),
            move |job: usize| {
                if job < 100 {
                    let _ = release_rx.lock().map(|rx| rx.recv());
                }
                let _ = done_tx.send(job);
            },
        )
        .unwrap();
        assert_eq!(pool.workers(), 2);
        // Eight jobs that block: six workers at most take six of them.
        for job in 0..8 {
            assert!(pool.try_submit(job).is_ok());
        }
        wait_until("six workers", || pool.workers() == 6);
        // One more that does not block waits for a busy worker.
        assert!(pool.try_submit(100).is_ok());
        assert!(done_rx.recv_timeout(Duration::from_millis(100)).is_err());
        for _ in 0..8 {
            release_tx.send(()).unwrap();
        }
        let mut done: Vec<usize> = (0..9)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        done.sort_unstable();
        assert_eq!(done, [0, 1, 2, 3, 4, 5, 6, 7, 100]);
        wait_until("the extra workers to leave", || pool.workers() == 2);
        pool.close_and_wait();
        assert_eq!(pool.workers(), 0);
    }

    #[test]
    fn close_runs_every_queued_job() {
        let (done_tx, done_rx) = mpsc::channel::<usize>();
        let pool = Pool::start(config(1, 1, Duration::from_secs(10)), move |job: usize| {
            let _ = done_tx.send(job);
        })
        .unwrap();
        for job in 0..100 {
            pool.submit_waiting(job);
        }
        pool.close_and_wait();
        let done: Vec<usize> = done_rx.try_iter().collect();
        assert_eq!(done, (0..100).collect::<Vec<_>>());
    }
}
