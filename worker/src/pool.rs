//! The worker's concurrency ("pool" in Celery's words): how many sends each
//! lane runs at once. It starts at `CELERY_WORKER_CONCURRENCY` and changes
//! at run time through `celery control pool_grow` / `pool_shrink` /
//! `autoscale`. Each lane admits work through its own [`Slots`], which
//! follow the current limit: a shrink takes effect as running sends finish
//! (none is interrupted), a grow at once.

use std::sync::Arc;

use tokio::sync::watch;

/// The autoscale range (`celery control autoscale max min`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autoscale {
    pub max: usize,
    pub min: usize,
}

/// Why a pool command was refused (Celery's own wording where it has one).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("pool_{0} is not supported with autoscale. Adjust autoscale range instead.")]
    Autoscaling(&'static str),
    #[error("autoscale needs max >= 1 and min <= max")]
    BadRange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size {
    /// Sends in flight per lane at most.
    limit: usize,
    autoscale: Option<Autoscale>,
}

/// The worker's concurrency, shared by its lanes and remote control.
pub struct Pool {
    size: watch::Sender<Size>,
}

impl Pool {
    pub fn new(concurrency: usize) -> Self {
        Pool {
            size: watch::Sender::new(Size {
                limit: concurrency.max(1),
                autoscale: None,
            }),
        }
    }

    /// Sends each lane runs at once.
    pub fn limit(&self) -> usize {
        self.size.borrow().limit
    }

    pub fn autoscale(&self) -> Option<Autoscale> {
        self.size.borrow().autoscale
    }

    /// `pool_grow n`.
    pub fn grow(&self, n: usize) -> Result<usize, PoolError> {
        self.resize("grow", |limit| limit.saturating_add(n))
    }

    /// `pool_shrink n`: never below one (a worker that runs nothing would
    /// hold its prefetched deliveries for good).
    pub fn shrink(&self, n: usize) -> Result<usize, PoolError> {
        self.resize("shrink", |limit| limit.saturating_sub(n).max(1))
    }

    fn resize(&self, what: &'static str, f: impl Fn(usize) -> usize) -> Result<usize, PoolError> {
        let mut result = Ok(0);
        self.size.send_if_modified(|size| {
            if size.autoscale.is_some() {
                result = Err(PoolError::Autoscaling(what));
                return false;
            }
            let before = size.limit;
            size.limit = f(before);
            result = Ok(size.limit);
            size.limit != before
        });
        result
    }

    /// `autoscale max min`. Our sends are tasks, not processes: an idle
    /// slot costs nothing, so the pool admits up to `max` sends at once and
    /// `min` is kept for the replies (Celery's autoscaler would keep `min`
    /// processes alive and grow towards `max` under load).
    pub fn set_autoscale(&self, max: usize, min: usize) -> Result<Autoscale, PoolError> {
        if max == 0 || min > max {
            return Err(PoolError::BadRange);
        }
        let range = Autoscale { max, min };
        self.size.send_modify(|size| {
            size.limit = max;
            size.autoscale = Some(range);
        });
        Ok(range)
    }

    fn watch(&self) -> watch::Receiver<Size> {
        self.size.subscribe()
    }
}

/// One lane's admission: at most the pool's limit of sends in flight.
pub struct Slots {
    pool: Arc<Pool>,
    in_flight: watch::Sender<usize>,
}

/// Sends admitted together; their slots are given back when it drops.
pub struct Permit {
    slots: Arc<Slots>,
    n: usize,
}

impl Permit {
    /// Keeps at most `n` of the slots (what the group's unfinished
    /// deliveries stand for) and gives back the rest.
    pub fn keep(&mut self, n: usize) {
        let given = self.n.saturating_sub(n);
        self.n -= given;
        self.slots
            .in_flight
            .send_modify(|f| *f = f.saturating_sub(given));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let n = self.n;
        self.slots
            .in_flight
            .send_modify(|f| *f = f.saturating_sub(n));
    }
}

impl Slots {
    pub fn new(pool: Arc<Pool>) -> Arc<Self> {
        Arc::new(Slots {
            pool,
            in_flight: watch::Sender::new(0),
        })
    }

    /// Sends in flight in this lane.
    pub fn in_flight(&self) -> usize {
        *self.in_flight.borrow()
    }

    /// Waits until `weight` sends (at most the current limit) may start.
    /// The limit is read again whenever it changes, so a shrink never
    /// leaves a request waiting for more slots than exist.
    pub async fn acquire(self: &Arc<Self>, weight: usize) -> Permit {
        let mut size = self.pool.watch();
        loop {
            // Subscribed before checking: a release in between wakes us.
            let mut released = self.in_flight.subscribe();
            let limit = size.borrow_and_update().limit;
            let n = weight.clamp(1, limit.max(1));
            let mut admitted = false;
            self.in_flight.send_if_modified(|f| {
                admitted = *f + n <= limit;
                if admitted {
                    *f += n;
                }
                admitted
            });
            if admitted {
                return Permit {
                    slots: self.clone(),
                    n,
                };
            }
            tokio::select! {
                _ = size.changed() => {}
                _ = released.changed() => {}
            }
        }
    }

    /// Waits until nothing is in flight.
    pub async fn drained(&self) {
        let mut in_flight = self.in_flight.subscribe();
        let _ = in_flight.wait_for(|f| *f == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_shrink_binds_new_work_and_a_grow_releases_it() {
        let pool = Arc::new(Pool::new(2));
        let slots = Slots::new(pool.clone());
        let a = slots.acquire(1).await;
        let _b = slots.acquire(1).await;
        assert_eq!(pool.shrink(1), Ok(1));
        drop(a);
        // One still in flight, the limit is one: the next waits...
        let waiting = tokio::time::timeout(Duration::from_millis(50), slots.acquire(1)).await;
        assert!(waiting.is_err());
        // ...until the pool grows.
        let grown = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(1).await.n }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.grow(1), Ok(2));
        assert_eq!(grown.await.unwrap(), 1);
        assert_eq!(pool.shrink(10), Ok(1));
        // A heavy request takes what the limit allows.
        drop(_b);
        let whole = slots.acquire(50).await;
        assert_eq!(whole.n, 1);
    }

    #[tokio::test]
    async fn a_permit_gives_back_its_slots_one_delivery_at_a_time() {
        let pool = Arc::new(Pool::new(3));
        let slots = Slots::new(pool);
        let mut group = slots.acquire(3).await;
        assert_eq!(slots.in_flight(), 3);
        group.keep(2);
        assert_eq!(slots.in_flight(), 2);
        // The freed slot admits the next delivery while the group runs on.
        let next = tokio::time::timeout(Duration::from_millis(50), slots.acquire(1)).await;
        assert!(next.is_ok());
        // A group clamped to the limit keeps its slots while what is left
        // of it still stands for more.
        group.keep(10);
        assert_eq!(slots.in_flight(), 3);
        group.keep(0);
        assert_eq!(slots.in_flight(), 1);
        drop(group);
        assert_eq!(slots.in_flight(), 1);
    }

    #[tokio::test]
    async fn autoscale_sets_the_limit_and_refuses_grow_and_shrink() {
        let pool = Pool::new(4);
        assert_eq!(pool.set_autoscale(8, 2), Ok(Autoscale { max: 8, min: 2 }));
        assert_eq!(pool.limit(), 8);
        assert_eq!(pool.grow(1), Err(PoolError::Autoscaling("grow")));
        assert_eq!(pool.set_autoscale(1, 2), Err(PoolError::BadRange));
        assert_eq!(
            PoolError::Autoscaling("shrink").to_string(),
            "pool_shrink is not supported with autoscale. Adjust autoscale range instead."
        );
    }
}
