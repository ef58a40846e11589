//! Authentication: API keys are exchanged for JWTs, and every protected
//! route takes a [`Principal`] extracted from the bearer token.

mod jwt;
mod key_cache;
mod principal;
mod throttle;

pub use jwt::{Claims, TokenIssuer, TokenKind};
pub use key_cache::KeyCache;
pub(crate) use principal::scoped_extractor;
pub use principal::{Admin, Principal, Scope};
pub use throttle::{AuthThrottle, Subject};
