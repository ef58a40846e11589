//! Sends this worker has admitted on each account with a connection cap
//! and not yet finished: they queue for the account's connections
//! ([`crate::smtp::TransportCache`]). Admission gives such an account at
//! most one send per connection at a time, and stops at a few rounds of
//! them, so that a group's sends spread over the pool instead of queueing
//! behind the first account's few connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

/// Sends admitted and not finished per allowed connection, at most: one
/// on the wire, the others ready to take it the moment it is free.
pub const PER_CONNECTION: i32 = 4;

#[derive(Default)]
pub struct Backlog {
    counts: Mutex<HashMap<Uuid, i32>>,
}

/// One admitted send on a capped account, counted until dropped.
pub struct Pending {
    backlog: Arc<Backlog>,
    account: Uuid,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut counts = self.backlog.lock();
        if let Some(count) = counts.get_mut(&self.account) {
            *count -= 1;
            if *count <= 0 {
                counts.remove(&self.account);
            }
        }
    }
}

impl Backlog {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, i32>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many sends the account may take now: a round of its
    /// connections, within its backlog (unbounded without a cap).
    pub fn room(&self, account: Uuid, max_connections: Option<i32>) -> i32 {
        match max_connections {
            Some(max) => {
                let pending = self.lock().get(&account).copied().unwrap_or(0);
                (max * PER_CONNECTION - pending).clamp(0, max)
            }
            None => i32::MAX,
        }
    }

    /// Counts `n` sends on a capped account until each is dropped.
    pub fn take(self: &Arc<Self>, account: Uuid, n: i32) -> Vec<Pending> {
        *self.lock().entry(account).or_default() += n;
        (0..n)
            .map(|_| Pending {
                backlog: self.clone(),
                account,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_shrinks_while_sends_are_pending_and_comes_back_as_they_finish() {
        let backlog = Arc::new(Backlog::default());
        let account = Uuid::new_v4();
        assert_eq!(backlog.room(account, Some(10)), 10);
        let pending = backlog.take(account, 35);
        assert_eq!(backlog.room(account, Some(10)), 5);
        let more = backlog.take(account, 5);
        assert_eq!(backlog.room(account, Some(10)), 0);
        drop((pending, more));
        assert_eq!(backlog.room(account, Some(10)), 10);
        assert_eq!(backlog.room(account, None), i32::MAX);
    }
}
