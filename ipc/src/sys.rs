//! Every libc call of the crate: SysV shared memory, semaphore sets and message queues, the
//! futex system call, flock, and the raw-pointer I/O used to move bytes in and out of segments.
//!
//! Each function maps `-1` to the errno as an `io::Error`; callers wrap it into
//! [`crate::Error::Os`] with the operation name.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Permission bits of every object this crate creates.
pub(crate) const MODE_0600: libc::c_int = 0o600;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// What `IPC_STAT` reports about an object, reduced to what the crate checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IpcStat {
    /// Creator pid (shared memory only; 0 for the other kinds, the kernel does not keep it).
    pub cpid: i32,
    /// Creation (or last `IPC_SET`) time, seconds since the epoch.
    pub ctime: i64,
    /// Owner uid.
    pub uid: u32,
    /// Creator uid.
    pub cuid: u32,
    /// Permission bits.
    pub mode: u32,
    /// The key (`IPC_PRIVATE` is 0).
    pub key: i32,
    /// Size in bytes (shared memory only).
    pub size: usize,
    /// Attach count (shared memory only).
    pub attached: u64,
}

fn perm_fields(perm: &libc::ipc_perm) -> (u32, u32, u32, i32) {
    (perm.uid, perm.cuid, u32::from(perm.mode), perm.__key)
}

// ---------------------------------------------------------------------------------------------
// Shared memory

/// `shmget(IPC_PRIVATE, size, IPC_CREAT | IPC_EXCL | 0600)`.
pub(crate) fn shm_create(size: usize) -> io::Result<i32> {
    // SAFETY: plain system call with integer arguments.
    check(unsafe {
        libc::shmget(
            libc::IPC_PRIVATE,
            size,
            libc::IPC_CREAT | libc::IPC_EXCL | MODE_0600,
        )
    })
}

/// `shmat(id, NULL, 0)`: maps the object read-write at an address the kernel picks.
pub(crate) fn shm_attach(id: i32) -> io::Result<ptr::NonNull<u8>> {
    // SAFETY: a NULL address lets the kernel choose a fresh mapping, so no existing memory of
    // this process is replaced.
    let addr = unsafe { libc::shmat(id, ptr::null(), 0) };
    if addr as isize == -1 {
        return Err(io::Error::last_os_error());
    }
    ptr::NonNull::new(addr.cast::<u8>()).ok_or_else(|| io::Error::other("shmat returned NULL"))
}

/// `shmdt(addr)`.
///
/// # Safety
/// `addr` must be an address returned by [`shm_attach`] that is not detached yet, and no
/// reference into the mapping may be used afterwards.
pub(crate) unsafe fn shm_detach(addr: ptr::NonNull<u8>) -> io::Result<()> {
    // SAFETY: the caller guarantees `addr` is a live attachment nobody uses any more.
    check(unsafe { libc::shmdt(addr.as_ptr().cast::<libc::c_void>().cast_const()) }).map(drop)
}

/// `shmctl(id, IPC_RMID)`: the kernel frees the object once nothing is attached.
pub(crate) fn shm_remove(id: i32) -> io::Result<()> {
    // SAFETY: IPC_RMID ignores the buffer argument, NULL is allowed.
    check(unsafe { libc::shmctl(id, libc::IPC_RMID, ptr::null_mut()) }).map(drop)
}

/// `shmctl(id, IPC_STAT)`.
pub(crate) fn shm_stat(id: i32) -> io::Result<IpcStat> {
    let mut ds = MaybeUninit::<libc::shmid_ds>::zeroed();
    // SAFETY: `ds` is a valid, writable shmid_ds the kernel fills in.
    check(unsafe { libc::shmctl(id, libc::IPC_STAT, ds.as_mut_ptr()) })?;
    // SAFETY: zero-initialised and filled by a successful IPC_STAT; every field is plain data.
    let ds = unsafe { ds.assume_init() };
    let (uid, cuid, mode, key) = perm_fields(&ds.shm_perm);
    Ok(IpcStat {
        cpid: ds.shm_cpid,
        ctime: ds.shm_ctime,
        uid,
        cuid,
        mode,
        key,
        size: ds.shm_segsz,
        attached: ds.shm_nattch,
    })
}

// ---------------------------------------------------------------------------------------------
// Semaphore sets

/// The fourth argument of `semctl`, which libc does not define.
#[repr(C)]
#[allow(dead_code)] // the other members exist to give the union its C size and alignment
union Semun {
    val: libc::c_int,
    buf: *mut libc::semid_ds,
    array: *mut libc::c_ushort,
}

/// `semget(IPC_PRIVATE, nsems, IPC_CREAT | IPC_EXCL | 0600)`.
pub(crate) fn sem_create(nsems: i32) -> io::Result<i32> {
    // SAFETY: plain system call with integer arguments.
    check(unsafe {
        libc::semget(
            libc::IPC_PRIVATE,
            nsems,
            libc::IPC_CREAT | libc::IPC_EXCL | MODE_0600,
        )
    })
}

/// `semctl(id, 0, IPC_STAT, arg)`.
pub(crate) fn sem_stat(id: i32) -> io::Result<IpcStat> {
    let mut ds = MaybeUninit::<libc::semid_ds>::zeroed();
    let arg = Semun {
        buf: ds.as_mut_ptr(),
    };
    // SAFETY: IPC_STAT reads `arg.buf`, which points at a writable semid_ds.
    check(unsafe { libc::semctl(id, 0, libc::IPC_STAT, arg) })?;
    // SAFETY: zero-initialised and filled by a successful IPC_STAT; every field is plain data.
    let ds = unsafe { ds.assume_init() };
    let (uid, cuid, mode, key) = perm_fields(&ds.sem_perm);
    Ok(IpcStat {
        cpid: 0,
        ctime: ds.sem_ctime,
        uid,
        cuid,
        mode,
        key,
        size: 0,
        attached: 0,
    })
}

/// `semop(id, {num, delta, 0})`: adds `delta` to semaphore `num`, blocking while that would make
/// it negative. No SEM_UNDO.
pub(crate) fn sem_add(id: i32, num: u16, delta: i16) -> io::Result<()> {
    let mut op = libc::sembuf {
        sem_num: num,
        sem_op: delta,
        sem_flg: 0,
    };
    loop {
        // SAFETY: `op` is one valid sembuf, and the count passed is 1.
        let ret = unsafe { libc::semop(id, &mut op, 1) };
        if ret == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `semctl(id, 0, IPC_RMID)`: removes the set at once.
pub(crate) fn sem_remove(id: i32) -> io::Result<()> {
    // SAFETY: IPC_RMID takes no fourth argument.
    check(unsafe { libc::semctl(id, 0, libc::IPC_RMID) }).map(drop)
}

// ---------------------------------------------------------------------------------------------
// Message queues

/// `msgget(IPC_PRIVATE, IPC_CREAT | IPC_EXCL | 0600)`.
pub(crate) fn msg_create() -> io::Result<i32> {
    // SAFETY: plain system call with integer arguments.
    check(unsafe {
        libc::msgget(
            libc::IPC_PRIVATE,
            libc::IPC_CREAT | libc::IPC_EXCL | MODE_0600,
        )
    })
}

/// `msgctl(id, IPC_STAT)`.
pub(crate) fn msg_stat(id: i32) -> io::Result<IpcStat> {
    let mut ds = MaybeUninit::<libc::msqid_ds>::zeroed();
    // SAFETY: `ds` is a valid, writable msqid_ds the kernel fills in.
    check(unsafe { libc::msgctl(id, libc::IPC_STAT, ds.as_mut_ptr()) })?;
    // SAFETY: zero-initialised and filled by a successful IPC_STAT; every field is plain data.
    let ds = unsafe { ds.assume_init() };
    let (uid, cuid, mode, key) = perm_fields(&ds.msg_perm);
    Ok(IpcStat {
        cpid: 0,
        ctime: ds.msg_ctime,
        uid,
        cuid,
        mode,
        key,
        size: 0,
        attached: 0,
    })
}

/// A message: its type and one word of payload.
#[repr(C)]
struct Message {
    mtype: libc::c_long,
    payload: u64,
}

/// `msgsnd(id, {mtype, payload}, 8, 0)`.
pub(crate) fn msg_send(id: i32, mtype: i64, payload: u64) -> io::Result<()> {
    let message = Message {
        mtype: mtype as libc::c_long,
        payload,
    };
    loop {
        // SAFETY: `message` starts with the `long` type the kernel expects, followed by exactly
        // the 8 payload bytes announced.
        let ret = unsafe {
            libc::msgsnd(
                id,
                (&message as *const Message).cast::<libc::c_void>(),
                8,
                0,
            )
        };
        if ret == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `msgrcv(id, buf, 8, mtype, 0)`: the payload of the next message of type `mtype`.
pub(crate) fn msg_receive(id: i32, mtype: i64) -> io::Result<u64> {
    let mut message = Message {
        mtype: 0,
        payload: 0,
    };
    loop {
        // SAFETY: `message` has room for the type and the 8 payload bytes asked for.
        let ret = unsafe {
            libc::msgrcv(
                id,
                (&mut message as *mut Message).cast::<libc::c_void>(),
                8,
                mtype as libc::c_long,
                0,
            )
        };
        if ret >= 0 {
            return Ok(message.payload);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `msgctl(id, IPC_RMID)`: removes the queue at once.
pub(crate) fn msg_remove(id: i32) -> io::Result<()> {
    // SAFETY: IPC_RMID ignores the buffer argument, NULL is allowed.
    check(unsafe { libc::msgctl(id, libc::IPC_RMID, ptr::null_mut()) }).map(drop)
}

// ---------------------------------------------------------------------------------------------
// Futex

/// How a futex wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FutexWait {
    /// Woken by a FUTEX_WAKE (or spuriously).
    Woken,
    /// The word no longer held the expected value.
    Changed,
    /// The timeout elapsed.
    TimedOut,
    /// A signal interrupted the wait.
    Interrupted,
}

/// `futex(word, FUTEX_WAIT, expected, timeout)`, shared between processes (no PRIVATE flag):
/// sleeps while `*word == expected`, at most `timeout`.
pub(crate) fn futex_wait(
    word: &AtomicU32,
    expected: u32,
    timeout: Duration,
) -> io::Result<FutexWait> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `word` is a live, aligned 32-bit atomic (the kernel only reads it); `ts` outlives
    // the call; the remaining arguments are unused by FUTEX_WAIT.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            ptr::null::<u32>(),
            0u32,
        )
    };
    if ret == 0 {
        return Ok(FutexWait::Woken);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) => Ok(FutexWait::Changed),
        Some(libc::ETIMEDOUT) => Ok(FutexWait::TimedOut),
        Some(libc::EINTR) => Ok(FutexWait::Interrupted),
        _ => Err(err),
    }
}

/// `futex(word, FUTEX_WAKE, n)`: wakes up to `n` waiters; returns how many were woken.
pub(crate) fn futex_wake(word: &AtomicU32, n: i32) -> io::Result<usize> {
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAKE does not touch memory.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            ptr::null::<libc::timespec>(),
            ptr::null::<u32>(),
            0u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(usize::try_from(ret).unwrap_or(0))
    }
}

// ---------------------------------------------------------------------------------------------
// Files and raw-pointer I/O

/// `flock(fd, LOCK_EX | LOCK_NB)`: `Ok(true)` if taken, `Ok(false)` if another open file holds it.
pub(crate) fn flock_try_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    loop {
        // SAFETY: plain system call on a valid descriptor.
        let ret = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if ret == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

/// `flock(fd, LOCK_UN)`.
pub(crate) fn flock_unlock(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain system call on a valid descriptor.
    check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_UN) }).map(drop)
}

/// One `pread(2)` of up to `len` bytes into `dst`.
///
/// # Safety
/// `dst..dst+len` must be valid for writes and not read or written by anyone else meanwhile.
pub(crate) unsafe fn pread_raw(
    fd: BorrowedFd<'_>,
    dst: *mut u8,
    len: usize,
    offset: u64,
) -> io::Result<usize> {
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the caller guarantees the destination range is writable and ours.
    let ret = unsafe { libc::pread(fd.as_raw_fd(), dst.cast::<libc::c_void>(), len, offset) };
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// One `send(2)` with `MSG_NOSIGNAL` of up to `len` bytes from `src`: a peer that went away is
/// `EPIPE`, never SIGPIPE.
///
/// # Safety
/// `src..src+len` must be valid for reads and not written by anyone meanwhile.
pub(crate) unsafe fn send_raw(fd: BorrowedFd<'_>, src: *const u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { send_raw_flags(fd, src, len, libc::MSG_NOSIGNAL) }
}

/// [`send_raw`] that never blocks: `WouldBlock` when the socket buffer is full.
///
/// # Safety
/// As [`send_raw`].
pub(crate) unsafe fn send_raw_nonblocking(
    fd: BorrowedFd<'_>,
    src: *const u8,
    len: usize,
) -> io::Result<usize> {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { send_raw_flags(fd, src, len, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) }
}

/// # Safety
/// As [`send_raw`].
unsafe fn send_raw_flags(
    fd: BorrowedFd<'_>,
    src: *const u8,
    len: usize,
    flags: libc::c_int,
) -> io::Result<usize> {
    // SAFETY: the caller guarantees the source range is readable and stable.
    let ret = unsafe { libc::send(fd.as_raw_fd(), src.cast::<libc::c_void>(), len, flags) };
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// The effective uid of this process.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and has no arguments.
    unsafe { libc::geteuid() }
}
