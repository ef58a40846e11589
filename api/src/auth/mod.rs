//! Authentication: API keys are exchanged for JWTs, and every protected
//! route takes a [`Principal`] extracted from the bearer token.

mod jwt;
mod principal;

pub use jwt::{Claims, TokenIssuer, TokenKind};
pub use principal::{Admin, Principal, Scope};
