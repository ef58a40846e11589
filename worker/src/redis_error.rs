//! What goes wrong when the worker asks Redis (throttles, revokes).

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("Redis unavailable: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}
