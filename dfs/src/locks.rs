//! Write locks: one writer per file, each lock a lease that ends by itself, so a crashed
//! client cannot hold a file for longer than the lease.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::path::DfsPath;

struct Holder {
    client_id: String,
    expires: Instant,
}

/// The server's write locks.
pub struct LockTable {
    lease: Duration,
    held: Mutex<HashMap<DfsPath, Holder>>,
}

impl LockTable {
    /// A table whose locks last `lease` from each acquire.
    pub fn new(lease: Duration) -> Self {
        LockTable {
            lease,
            held: Mutex::new(HashMap::new()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<DfsPath, Holder>> {
        // Every change is a single insert or remove: a poisoned table is consistent.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes or renews `path` for `client_id`; the lease. Another live holder:
    /// [`Error::LockHeld`].
    pub fn acquire(&self, path: &DfsPath, client_id: &str) -> Result<Duration> {
        let now = Instant::now();
        let mut held = self.held();
        if let Some(holder) = held.get(path) {
            if holder.client_id != client_id && holder.expires > now {
                return Err(Error::LockHeld(path.to_string()));
            }
        }
        held.insert(
            path.clone(),
            Holder {
                client_id: client_id.to_string(),
                expires: now + self.lease,
            },
        );
        Ok(self.lease)
    }

    /// Ok when `client_id` holds `path` now; [`Error::LockHeld`] when another client does,
    /// [`Error::LockNotHeld`] when nobody does.
    pub fn check(&self, path: &DfsPath, client_id: &str) -> Result<()> {
        match self.held().get(path) {
            Some(holder) if holder.expires <= Instant::now() => {
                Err(Error::LockNotHeld(path.to_string()))
            }
            Some(holder) if holder.client_id == client_id => Ok(()),
            Some(_) => Err(Error::LockHeld(path.to_string())),
            None => Err(Error::LockNotHeld(path.to_string())),
        }
    }

    /// Ok unless another client holds `path` (a delete needs no lock of its own, but must
    /// not cut in on a writer).
    pub fn check_not_held_by_other(&self, path: &DfsPath, client_id: &str) -> Result<()> {
        match self.check(path, client_id) {
            Err(Error::LockHeld(p)) => Err(Error::LockHeld(p)),
            _ => Ok(()),
        }
    }

    /// Gives `path` back if `client_id` holds it.
    pub fn release(&self, path: &DfsPath, client_id: &str) {
        let mut held = self.held();
        if held.get(path).is_some_and(|h| h.client_id == client_id) {
            held.remove(path);
        }
    }

    /// Live locks now (expired ones are dropped on the way).
    pub fn held_count(&self) -> usize {
        let now = Instant::now();
        let mut held = self.held();
        held.retain(|_, holder| holder.expires > now);
        held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_until_release_or_expiry() {
        let table = LockTable::new(Duration::from_millis(50));
        let path = DfsPath::parse("f").unwrap();
        table.acquire(&path, "a").unwrap();
        assert!(matches!(table.acquire(&path, "b"), Err(Error::LockHeld(_))));
        assert!(table.check(&path, "a").is_ok());
        assert!(matches!(table.check(&path, "b"), Err(Error::LockHeld(_))));
        table.release(&path, "a");
        assert!(matches!(
            table.check(&path, "a"),
            Err(Error::LockNotHeld(_))
        ));
        table.acquire(&path, "b").unwrap();
        std::thread::sleep(Duration::from_millis(60)); // the lease itself is under test
        table.acquire(&path, "a").unwrap();
    }
}
